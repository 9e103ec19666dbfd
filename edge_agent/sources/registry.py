"""The source registry: config ``type`` -> implementation, imported only when used."""

from __future__ import annotations

from edge_agent.registry import Registry

SOURCES = Registry("sources", {
    "camera": "edge_agent.sources.camera:OpencvCameraSource",
    "video": "edge_agent.sources.camera:OpencvVideoSource",
    "images": "edge_agent.sources.images:ImageFolderSource",
    "synthetic": "edge_agent.sources.synthetic:SyntheticSource",
    "sensor": "edge_agent.sources.sensor:SensorSource",
}, extras={"sensor": "serial"})
