"""One frame for people to look at: the privacy policy's redaction, then the annotations.

The policy is handed in (the agent's, or the snapshot command's); this module draws nothing
the policy would not publish: only detections that pass its filters, on an image redacted
exactly as a snapshot is (:meth:`PrivacyPolicy.redacted_copy`).
"""

from __future__ import annotations

from typing import Any, Protocol

import cv2
import numpy as np

from edge_agent.config import PipelineConfig
from edge_agent.types import Detection, Frame, Result
from edge_agent.view.annotate import draw_detections, draw_polygons

JPEG_QUALITY = 80


class RedactingPolicy(Protocol):
    """What the view needs of the privacy policy."""

    def filter_detections(self, detections: tuple[Detection, ...], *,
                          count: bool = True) -> list[Detection]: ...

    def redacted_copy(self, image: np.ndarray, *,
                      purpose: Any = "snapshot") -> tuple[np.ndarray, int] | None: ...


def detections_info(visible: list[Detection], zone_names: tuple[str, ...]) -> dict[str, Any]:
    """The side panel's data: detections and counts per zone and label."""
    zones: dict[str, dict[str, int]] = {name: {} for name in zone_names}
    for det in visible:
        for name in det.zones:
            per = zones.setdefault(name, {})
            per[det.label] = per.get(det.label, 0) + 1
    return {
        "detections": [{"label": d.label, "score": round(float(d.score), 3),
                        "box": [round(float(v), 3) for v in d.box], "track_id": d.track_id,
                        "zones": list(d.zones)} for d in visible],
        "zones": zones,
    }


def render_frame(policy: RedactingPolicy, cfg: PipelineConfig, frame: Frame, result: Result,
                 *, purpose: str = "view") -> tuple[bytes, dict[str, Any]] | None:
    """The annotated, redacted JPEG of ``frame`` and its info, or None if it must not be shown.

    Args:
        policy: the pipeline's privacy policy.
        cfg: the pipeline's config (masks and zones to draw).
        frame: the frame (already masked, as the pipeline masks before inference).
        result: the frame's result (detections after tracking and zones).
        purpose: ``view`` or ``snapshot`` (which counters a refusal goes to).
    """
    if frame.image is None or frame.image.ndim != 3:
        return None
    redacted = policy.redacted_copy(frame.image, purpose=purpose)
    if redacted is None:
        return None
    image, faces = redacted
    visible = policy.filter_detections(result.inference.detections, count=False)
    draw_polygons(image, cfg.privacy.masks, masks=True)
    draw_polygons(image, [z.polygon for z in cfg.zones], [z.name for z in cfg.zones])
    draw_detections(image, visible)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        return None
    info = detections_info(visible, result.zone_names)
    info.update({"frame": int(frame.index), "ts": float(frame.ts), "faces_redacted": faces,
                 "width": int(image.shape[1]), "height": int(image.shape[0])})
    return buf.tobytes(), info
