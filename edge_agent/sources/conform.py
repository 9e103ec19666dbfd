"""Frames as the pipeline needs them: (H, W, 3) uint8 BGR, bounded in size.

Sources hand over what the device or file gives: a grey camera (H, W), a 4-channel PNG, a
16-bit frame, an empty buffer from a broken stream. :func:`conform_image` converts what has a
clear meaning (grey and BGRA to BGR, 16-bit to 8-bit) and refuses the rest with a reason, so
the pipeline skips and counts the frame instead of failing deep inside preprocessing.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge_agent.sources.encoded import JPEG_MAGIC, jpeg_size

MAX_FRAME_PIXELS = 50_000_000
"""Frames (and image files) above 50 megapixels are refused: 150 MB once decoded as BGR."""


def conform_image(image: object) -> tuple[np.ndarray | None, str | None]:
    """``(image as (H, W, 3) uint8 BGR, None)``, or ``(None, reason)`` when it cannot be one.

    Returns the same array when it already conforms (no copy).
    """
    if not isinstance(image, np.ndarray):
        return None, f"not an image array ({type(image).__name__})"
    if image.ndim not in (2, 3) or image.size == 0 or min(image.shape[:2]) < 1:
        return None, f"empty or malformed frame (shape {image.shape})"
    h, w = image.shape[:2]
    if h * w > MAX_FRAME_PIXELS:
        return None, f"frame of {w}x{h} is over {MAX_FRAME_PIXELS // 1_000_000} megapixels"
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels not in (1, 3, 4):
        return None, f"frame with {channels} channels (expected 1, 3 or 4)"
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        return None, f"frame of {image.dtype} pixels (expected 8 or 16-bit integers)"
    if channels == 1:
        image = cv2.cvtColor(np.ascontiguousarray(image.reshape(h, w)), cv2.COLOR_GRAY2BGR)
    elif channels == 4:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGRA2BGR)
    return image, None


def image_file_pixels(path: str | Path) -> int | None:
    """Width x height from a PNG's or JPEG's header (without decoding it); None if unknown.

    A small file can decode to gigabytes (a 160 kB PNG of 12000x12000 is 430 MB as BGR), so
    the size is checked before :func:`cv2.imread` is asked to decode it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w) * int(h)
    if head.startswith(JPEG_MAGIC):
        size = jpeg_size(head)
        return None if size is None else size[0] * size[1]
    return None
