"""Polygons in normalised coordinates: the one implementation that privacy masks, zones and
the live view's drawing share.

A polygon is three or more ``(x, y)`` points, 0..1 on both axes, origin top-left (the box
convention of :mod:`edge_agent.types`). A point on the edge counts as inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Polygon = Sequence[Sequence[float]]
"""A polygon: three or more normalised ``(x, y)`` points."""


def as_array(polygon: Polygon) -> np.ndarray:
    """``polygon`` as a (N, 2) float32 array (what the other functions take)."""
    return np.asarray(polygon, dtype=np.float32).reshape(-1, 2)


def inside(polygon: np.ndarray, x: float, y: float) -> bool:
    """Whether the normalised point ``(x, y)`` lies inside or on the edge of ``polygon``."""
    return cv2.pointPolygonTest(polygon, (float(x), float(y)), False) >= 0


def pixel_points(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 2) int32 pixel coordinates of ``polygon`` on a ``width`` x ``height`` image."""
    scale = np.array([width, height], np.float32)
    pts: np.ndarray = np.round(polygon * scale).astype(np.int32)
    return pts


def fill_mask(polygons: Sequence[np.ndarray], width: int, height: int) -> np.ndarray:
    """(H, W) uint8: 255 where any polygon covers the pixel, else 0 (fresh array)."""
    mask = np.zeros((height, width), np.uint8)
    pts = [pixel_points(p, width, height) for p in polygons]
    if pts:
        cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_8)
        # fillPoly leaves the far edge of a polygon touching x=1 or y=1 one pixel short
        cv2.polylines(mask, pts, True, 255, thickness=1, lineType=cv2.LINE_8)
    return mask
