"""Privacy masks: polygons in normalised coordinates, blacked out and used to drop detections.

The pixel mask is rasterised once per frame size and reused, so blacking out costs one
vectorised AND per frame.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np

from edge_agent.polygons import Polygon, as_array, fill_mask, inside

__all__ = ["MaskSet", "Polygon"]


class MaskSet:
    """The mask polygons of one pipeline."""

    def __init__(self, polygons: Sequence[Polygon]) -> None:
        """Keep ``polygons`` (normalised points, origin top-left)."""
        self.polygons = [as_array(p) for p in polygons]
        self._keep: dict[tuple[int, int, int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.polygons)

    def __len__(self) -> int:
        return len(self.polygons)

    def contains(self, x: float, y: float) -> bool:
        """Whether the normalised point ``(x, y)`` lies inside (or on the edge of) any polygon."""
        return any(inside(p, x, y) for p in self.polygons)

    def pixel_mask(self, width: int, height: int) -> np.ndarray:
        """(H, W) uint8: 255 where a polygon covers the pixel, else 0 (fresh array)."""
        return fill_mask(self.polygons, width, height)

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
