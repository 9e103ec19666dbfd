"""The decoder registry: config name -> implementation, imported only when used."""

from __future__ import annotations

from edge_agent.registry import Registry

DECODERS = Registry("decoders", {
    "ssd": "edge_agent.decoders.ssd:SsdDecoder",
    "yolo": "edge_agent.decoders.yolo:YoloDecoder",
    "classification": "edge_agent.decoders.classification:ClassificationDecoder",
    "anchors": "edge_agent.decoders.anchors:AnchorsDecoder",
    "raw": "edge_agent.decoders.raw:RawDecoder",
    "threshold": "edge_agent.decoders.threshold:ThresholdDecoder",
})
