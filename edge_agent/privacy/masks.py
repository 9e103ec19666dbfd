"""Privacy masks: polygons in normalised coordinates, blacked out and used to drop detections.

The pixel mask is rasterised once per frame size and reused, so blacking out costs one
vectorised AND per frame.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np

Polygon = Sequence[Sequence[float]]
"""A polygon: three or more normalised ``(x, y)`` points."""


class MaskSet:
    """The mask polygons of one pipeline."""

    def __init__(self, polygons: Sequence[Polygon]) -> None:
        """Keep ``polygons`` (normalised points, origin top-left)."""
        self.polygons = [np.asarray(p, dtype=np.float32).reshape(-1, 2) for p in polygons]
        self._keep: dict[tuple[int, int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def __len__(self) -> int:
        return len(self.polygons)

    def contains(self, x: float, y: float) -> bool:
        """Whether the normalised point ``(x, y)`` lies inside (or on the edge of) any polygon."""
        pt = (float(x), float(y))
        return any(cv2.pointPolygonTest(p, pt, False) >= 0 for p in self.polygons)

    def pixel_mask(self, width: int, height: int) -> np.ndarray:
        """(H, W) uint8: 255 where a polygon covers the pixel, else 0 (fresh array)."""
        mask = np.zeros((height, width), np.uint8)
        scale = np.array([width, height], np.float32)
        pts = [np.round(p * scale).astype(np.int32) for p in self.polygons]
        if pts:
            cv2.fillPoly(mask, pts, 255, lineType=cv2.LINE_8)
            # fillPoly leaves the far edge of a polygon touching x=1 or y=1 one pixel short
            cv2.polylines(mask, pts, True, 255, thickness=1, lineType=cv2.LINE_8)
        return mask

    def block_mask(self, width: int, height: int, block: int) -> np.ndarray:
        """Like :meth:`pixel_mask`, grown to whole ``block`` x ``block`` tiles of the frame.

        JPEG codes 16x16 blocks (8x8 luma, 4:2:0 chroma); a block that is only partly black
        rings after decoding. Blacking every block a polygon touches keeps each masked pixel
        exactly black in the published JPEG (and never hides less).
        """
        mask = self.pixel_mask(width, height)
        if block <= 1:
            return mask
        bw, bh = -(-width // block), -(-height // block)
        padded = np.zeros((bh * block, bw * block), np.uint8)
        padded[:height, :width] = mask
        touched = padded.reshape(bh, block, bw, block).max(axis=(1, 3))
        grown = np.repeat(np.repeat(touched, block, axis=0), block, axis=1)
        return np.ascontiguousarray(grown[:height, :width])

    def _keep_mask(self, width: int, height: int, channels: int, block: int) -> np.ndarray:
        key = (width, height, channels, block)
        with self._lock:
            keep = self._keep.get(key)
            if keep is None:
                inv = cv2.bitwise_not(self.block_mask(width, height, block))
                keep = np.repeat(inv[:, :, None], channels, axis=2) if channels > 1 else inv
                if len(self._keep) > 8:  # frame sizes rarely change; stay bounded anyway
                    self._keep.clear()
                self._keep[key] = keep
            return keep

    def apply(self, image: np.ndarray, block: int = 1) -> np.ndarray:
        """Black out the masked pixels of ``image`` **in place** and return it.

        Args:
            image: (H, W, C) or (H, W) uint8, owned by the caller (the pipeline's own frame
                buffer, or a copy).
            block: 1 for exact polygons (before inference); 16 for snapshots (whole JPEG
                blocks, see :meth:`block_mask`).
        """
        if not self.polygons or image.size == 0:
            return image
        h, w = image.shape[:2]
        channels = image.shape[2] if image.ndim == 3 else 1
        keep = self._keep_mask(w, h, channels, block)
        cv2.bitwise_and(image, keep, dst=image)
        return image
