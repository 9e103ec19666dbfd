"""Face redaction for snapshots, and a tiled face finder for full-resolution frames.

The face detector itself (BlazeFace full range on the agent's runtime and anchors decoder) is
built by the agent and handed in as a callable ``detect(image_bgr) -> list[Box]`` whose boxes
are normalised to the image it was given; this package never loads a model.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Literal

import cv2
import numpy as np

from edge_agent.types import Box

RedactMode = Literal["blur", "fill"]
FaceDetector = Callable[[np.ndarray], list[Box]]

EXPAND = 0.3
"""Each side of a face box grows by this fraction of the box (hair, ears, chin)."""

_MOSAIC_CELLS = 2  # blur: the face is reduced to 2x2 cells, then grown back smoothly


def expand_box(box: Box, fraction: float = EXPAND) -> Box:
    """``box`` grown by ``fraction`` of its width/height on every side, clipped to 0..1."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * fraction, (y1 - y0) * fraction
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy))


def _pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    x0 = max(0, math.floor(box[0] * width))
    y0 = max(0, math.floor(box[1] * height))
    x1 = min(width, math.ceil(box[2] * width))
    y1 = min(height, math.ceil(box[3] * height))
    return x0, y0, x1, y1


def redact(image: np.ndarray, boxes: Sequence[Box], mode: RedactMode = "fill", *,
           expand: float = EXPAND) -> np.ndarray:
    """Redact every box of ``image`` **in place** and return it.

    Args:
        image: (H, W, 3) uint8 BGR, owned by the caller (a snapshot copy).
        boxes: normalised xyxy boxes (faces).
        mode: ``fill`` paints the box black; ``blur`` reduces it to 2x2 cells and grows
            them back bilinearly (a smooth gradient of the region's colours). Neither alone
            guarantees that a detector finds nothing (a head's outline stays); the policy
            re-checks every snapshot and fills whatever is still found
            (see ``PrivacyPolicy.snapshot``).
        expand: fraction by which each box grows on every side before redaction.
    """
    h, w = image.shape[:2]
    for box in boxes:
        x0, y0, x1, y1 = _pixels(expand_box(box, expand), w, h)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = image[y0:y1, x0:x1]
        if mode == "fill":
            roi[...] = 0
            continue
        cells = (min(_MOSAIC_CELLS, x1 - x0), min(_MOSAIC_CELLS, y1 - y0))
        small = cv2.resize(roi, cells, interpolation=cv2.INTER_AREA)
        # bilinear growth of a 2x2 image is a smooth gradient: no detail survives, at the
        # cost of one resize (a Gaussian as wide as the face cost ~100x more)
        cv2.resize(small, (x1 - x0, y1 - y0), dst=roi, interpolation=cv2.INTER_LINEAR)
    return image


def _touches(tile: tuple[int, int, int], box: Box, width: int, height: int) -> bool:
    x, y, side = tile
    return (box[0] * width < x + side and box[2] * width > x
            and box[1] * height < y + side and box[3] * height > y)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def merge_boxes(boxes: Sequence[Box], iou: float = 0.3) -> list[Box]:
    """Merge overlapping boxes into their union (never shrinks what gets redacted)."""
    merged: list[Box] = []
    for box in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        for i, m in enumerate(merged):
            if _iou(box, m) >= iou:
                merged[i] = (min(m[0], box[0]), min(m[1], box[1]),
                             max(m[2], box[2]), max(m[3], box[3]))
                break
        else:
            merged.append(box)
    return merged


class TiledFaceFinder:
    """Find small faces in a large frame by running a square-input detector over tiles.

    BlazeFace full range sees 192x192: a 1280x720 frame letterboxed to it shrinks faces
    6.7x. The finder runs ``detect`` on the whole frame and then on overlapping square tiles
    of side ``min(H, W)``, halving until the side drops below ``1.5 * input_size``
    (1280x720: whole + 3 tiles of 720 + 15 tiles of 360 = 19 detector runs), maps every box
    back and merges overlaps. Use it as the policy's ``face_detector``.
    """

    def __init__(self, detect: FaceDetector, *, input_size: int = 192,
                 overlap: float = 0.25, merge_iou: float = 0.3) -> None:
        """Wrap ``detect(image_bgr) -> list[Box]`` (boxes normalised to the image given).

        Args:
            detect: a face detector that letterboxes whatever it is given to its input.
            input_size: the detector's square input side in pixels.
            overlap: fraction of a tile shared with its neighbour.
            merge_iou: boxes overlapping by at least this much are merged into their union.
        """
        self.detect = detect
        self._lock = threading.Lock()  # one interpreter: one caller at a time (pipelines share)
        self.input_size = input_size
        self.overlap = overlap
        self.merge_iou = merge_iou

    def tiles(self, width: int, height: int) -> list[tuple[int, int, int]]:
        """``(x, y, side)`` of every square tile for a frame of this size (whole frame apart)."""
        out: list[tuple[int, int, int]] = []
        side = min(width, height)
        while side >= 1.5 * self.input_size:
            stride = side * (1.0 - self.overlap)
            nx = max(1, math.ceil((width - side) / stride) + 1)
            ny = max(1, math.ceil((height - side) / stride) + 1)
            xs = np.linspace(0, width - side, nx).round().astype(int)
            ys = np.linspace(0, height - side, ny).round().astype(int)
            out += [(int(x), int(y), side) for y in ys for x in xs]
            side //= 2
        return out

    def __call__(self, image: np.ndarray, changed: Sequence[Box] | None = None) -> list[Box]:
        """All faces in ``image`` (BGR, full resolution), normalised to it.

        Args:
            image: the frame.
            changed: for a re-check after redaction: only the regions that changed since the
                last call on this image. Tiles that do not touch them saw the same pixels and
                found nothing then (every face found was redacted, so its tile changed), so
                only the whole frame and the touched tiles run again.
        """
        h, w = image.shape[:2]
        tiles = self.tiles(w, h)
        if changed is not None:
            tiles = [t for t in tiles if any(_touches(t, b, w, h) for b in changed)]
        with self._lock:
            boxes: list[Box] = [(float(b[0]), float(b[1]), float(b[2]), float(b[3]))
                                for b in self.detect(image)]
            for x, y, side in tiles:
                tile = np.ascontiguousarray(image[y:y + side, x:x + side])
                for b in self.detect(tile):
                    boxes.append(((x + b[0] * side) / w, (y + b[1] * side) / h,
                                  (x + b[2] * side) / w, (y + b[3] * side) / h))
        return merge_boxes(boxes, self.merge_iou)


TiledFaceDetector = TiledFaceFinder
"""Alias (the name the agent imports)."""
