"""Video clips with camera faults at known times, written with OpenCV, for camera-health tests.

Each clip is an ordinary synthetic scene (moving shapes and figures on a textured background,
with sensor noise) for ``onset_s`` seconds, then the fault for ``fault_s`` seconds, then the
ordinary scene again (except ``turned``, which stays on the new view). The ground truth is the
fault's kind and onset; :func:`read_clip` gives the decoded frames with their times.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge_agent.config import SyntheticSourceConfig
from edge_agent.sources.synthetic import SyntheticSource

FAULTS = {  # fault -> the event it must raise
    "covered": "camera_blocked",
    "turned": "camera_moved",
    "blurred": "camera_defocused",
    "dark": "camera_dark",
    "frozen": "camera_frozen",
}


def _scene(seed: int, width: int, height: int) -> SyntheticSource:
    return SyntheticSource(SyntheticSourceConfig(type="synthetic", width=width, height=height,
                                                 seed=seed, objects=3))


def faulty_frames(fault: str, *, fps: float = 10.0, onset_s: float = 30.0, fault_s: float = 10.0,
                  after_s: float = 10.0, width: int = 320,
                  height: int = 240) -> Iterator[np.ndarray]:
    """The frames (BGR uint8) of a clip with ``fault`` starting at ``onset_s``."""
    if fault not in FAULTS and fault != "none":
        raise ValueError(f"unknown fault {fault!r}")
    scene = _scene(7, width, height)
    other = _scene(1234, width, height)  # what a turned camera sees
    rng = np.random.default_rng(5)
    total = round((onset_s + fault_s + after_s) * fps)
    start, end = round(onset_s * fps), round((onset_s + fault_s) * fps)
    frozen: np.ndarray | None = None
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for n in range(total):
        image = scene.render(n)
        if fault == "none" or n < start or (n >= end and fault != "turned"):
            yield image
            continue
        k = n - start
        if fault == "covered":
            # a hand over the lens: skin tone, soft shading, a little sensor noise
            shade = 90 + 25 * np.exp(-((xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2)
                                     / (2 * (width * 0.5) ** 2))
            hand = np.stack([shade * 0.55, shade * 0.75, shade], axis=2)
            hand += rng.normal(0, 2.0, hand.shape).astype(np.float32)
            yield np.clip(hand, 0, 255).astype(np.uint8)
        elif fault == "turned":
            # the camera swings to another view over 0.5 s, then stays
            swing = min(1.0, k / (0.5 * fps))
            new = other.render(n)
            shift = round(swing * width)
            mixed = np.concatenate([image[:, shift:], new[:, :shift]], axis=1)
            yield mixed
        elif fault == "blurred":
            yield cv2.GaussianBlur(image, (0, 0), 5.0)
        elif fault == "dark":
            dim = image.astype(np.float32) * 0.06 + rng.normal(0, 1.5, image.shape)
            yield np.clip(dim, 0, 255).astype(np.uint8)
        elif fault == "frozen":
            if frozen is None:
                frozen = image
            yield frozen


def write_clip(path: Path, fault: str, *, fps: float = 10.0, **kwargs: float) -> Path:
    """Write the clip of ``fault`` as an MJPG AVI; returns ``path``."""
    writer: cv2.VideoWriter | None = None
    for image in faulty_frames(fault, fps=fps, **kwargs):  # type: ignore[arg-type]
        if writer is None:
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
            assert writer.isOpened(), "OpenCV cannot write MJPG here"
        writer.write(image)
    assert writer is not None
    writer.release()
    return path


def read_clip(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """``(seconds, frame)`` of every frame of a clip, times from its frame rate."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    n = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield n / fps, image
            n += 1
    finally:
        cap.release()
