"""Drawing on a (redacted) frame: boxes with label, score and track id; masks; zones.

Everything here draws on an image the caller owns, after the privacy policy redacted it; the
drawing adds no pixels of the scene, only lines and text.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from edge_agent.polygons import Polygon, as_array, pixel_points
from edge_agent.types import Detection

BOX_COLOR = (0, 255, 0)  # BGR: green boxes
ZONE_COLORS = ((255, 160, 0), (0, 200, 255), (255, 0, 200), (0, 128, 255), (200, 255, 0))
MASK_COLOR = (128, 128, 128)
TEXT_COLOR = (0, 0, 0)


def _thickness(image: np.ndarray) -> int:
    return max(2, round(min(int(image.shape[0]), int(image.shape[1])) / 240))


def _label(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    """``text`` on a filled ``color`` tag whose bottom-left is at (x, y), kept in the image."""
    scale = max(0.4, min(image.shape[:2]) / 800)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = min(max(0, x), max(0, image.shape[1] - tw - 4))
    y = max(th + base + 2, y)
    cv2.rectangle(image, (x, y - th - base - 2), (x + tw + 4, y), color, cv2.FILLED)
    cv2.putText(image, text, (x + 2, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_COLOR, 1,
                cv2.LINE_AA)


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """Draw each detection's box and ``label score #track`` **in place**; return ``image``."""
    h, w = image.shape[:2]
    t = _thickness(image)
    for det in detections:
        x0, y0, x1, y1 = det.box
        p0 = (round(x0 * w), round(y0 * h))
        p1 = (round(x1 * w), round(y1 * h))
        cv2.rectangle(image, p0, p1, BOX_COLOR, t)
        text = f"{det.label} {det.score:.2f}"
        if det.track_id is not None:
            text += f" #{det.track_id}"
        _label(image, text, p0[0], p0[1], BOX_COLOR)
    return image


def draw_polygons(image: np.ndarray, polygons: Sequence[Polygon], names: Sequence[str] = (),
                  *, masks: bool = False) -> np.ndarray:
    """Outline ``polygons`` **in place** (zones in colour with their names, masks in grey)."""
    h, w = image.shape[:2]
    t = _thickness(image)
    for i, polygon in enumerate(polygons):
        color = MASK_COLOR if masks else ZONE_COLORS[i % len(ZONE_COLORS)]
        pts = pixel_points(as_array(polygon), w, h)
        cv2.polylines(image, [pts], True, color, t, cv2.LINE_AA)
        if i < len(names):
            x, y = (int(v) for v in pts.min(axis=0))
            _label(image, names[i], x + t, y + 2 * t + 14, color)
    return image
