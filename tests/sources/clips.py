"""Small test videos and images whose frames say their own position (by brightness)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

SIZE = (64, 48)  # (w, h): small, so writing and decoding cost almost nothing


def level(i: int) -> int:
    """The grey level of frame ``i`` (distinct for i < 80)."""
    return 10 + 3 * i


def frame_number(image: np.ndarray) -> int:
    """Recover ``i`` from a decoded frame (MJPG keeps a flat frame's mean within ~1 level)."""
    return round((float(image.mean()) - 10) / 3)


def write_numbered_video(path: Path, count: int, fps: float = 25.0) -> Path:
    """An MJPG .avi with ``count`` flat frames, frame i at grey level ``level(i)``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened()
    for i in range(count):
        writer.write(np.full((SIZE[1], SIZE[0], 3), level(i), np.uint8))
    writer.release()
    return path


def write_numbered_image(path: Path, i: int) -> Path:
    """A flat image at grey level ``level(i)`` (lossless formats only, or JPEG at q100)."""
    assert cv2.imwrite(str(path), np.full((SIZE[1], SIZE[0], 3), level(i), np.uint8))
    return path
