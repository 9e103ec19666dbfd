"""The camera source on a real V4L2 device: raw buffers handed over undecoded.

Needs a V4L2 capture device that speaks YUYV, NV12 and RGB24, named by
``EDGE_AGENT_V4L2_DEVICE``: ``./dev v4l2`` (tests/system/v4l2.py) boots a VM on Debian's
kernel with the ``vivid`` test driver and runs this file there. Skipped elsewhere: this
machine's kernel has no media support.

vivid draws colour bars under a text block whose first line is a running clock; the clock is
the only thing that changes between frames (well under 1% of the pixels).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config import CameraSourceConfig, PipelineConfig
from edge_agent.sources.camera import OpencvCameraSource
from edge_agent.sources.encoded import EncodedImage
from edge_agent.types import Frame
from tests.fakes import gated_pipeline

DEVICE = os.environ.get("EDGE_AGENT_V4L2_DEVICE", "")
pytestmark = pytest.mark.skipif(
    not DEVICE or not Path(DEVICE).exists(),
    reason="no V4L2 device (EDGE_AGENT_V4L2_DEVICE): `./dev v4l2` runs these against the "
           "kernel's vivid driver in a VM")

VIDIOC_S_CTRL = 0xC008561C  # _IOWR('V', 28, struct v4l2_control)
V4L2_CID_BRIGHTNESS = 0x00980900


def _camera(fourcc: str) -> dict[str, Any]:
    return {"type": "camera", "uri": DEVICE, "width": 640, "height": 480, "fourcc": fourcc}


def _frames(fourcc: str, n: int, *, defer: bool) -> tuple[OpencvCameraSource, list[Frame]]:
    source = OpencvCameraSource(CameraSourceConfig.model_validate(_camera(fourcc)))
    source.defer_decode = defer
    source.open()
    frames: list[Frame] = []
    try:
        while len(frames) < n:
            frame = source.read(10.0)
            assert frame is not None, f"{DEVICE} delivered no frame in 10 s"
            frames.append(frame)
    finally:
        source.close()
    return source, frames


def _brightness(value: int) -> None:
    """Set the device's brightness through the V4L2 control ioctl (a scene change)."""
    fd = os.open(DEVICE, os.O_RDWR)
    try:
        fcntl.ioctl(fd, VIDIOC_S_CTRL, struct.pack("=Ii", V4L2_CID_BRIGHTNESS, value))
    finally:
        os.close(fd)


@pytest.mark.parametrize("fourcc", ["YUYV", "NV12"])
def test_raw_buffers_are_handed_over_and_decode_as_opencv_converts(fourcc: str) -> None:
    source, frames = _frames(fourcc, 4, defer=True)
    assert source.raw_format == fourcc.lower()
    for frame in frames:
        assert isinstance(frame.encoded, EncodedImage)
        assert frame.encoded.kind == fourcc.lower()
        assert not frame.encoded.decoded
        assert (frame.width, frame.height) == (640, 480)
    ours = frames[-1].encoded.decode()  # type: ignore[union-attr]
    _, converted = _frames(fourcc, 1, defer=False)
    theirs = converted[0].image
    assert ours is not None and theirs is not None and ours.shape == theirs.shape == (480, 640, 3)
    # the same picture as OpenCV's own conversion: only vivid's running clock differs
    differs = cv2.absdiff(ours, theirs).max(axis=2) > 8
    assert float(differs.mean()) < 0.01
    # the gate's reduced copy is the picture shrunk, without a full conversion
    small = frames[0].encoded.reduced(160)  # type: ignore[union-attr]
    assert small is not None and small.shape == (120, 160, 3)
    assert not frames[0].encoded.decoded  # type: ignore[union-attr]
    shrunk = cv2.resize(ours, (160, 120), interpolation=cv2.INTER_AREA)
    assert float(np.mean(cv2.absdiff(shrunk, small))) < 8.0


def test_a_format_without_a_raw_path_is_decoded_as_before() -> None:
    source, frames = _frames("RGB3", 2, defer=True)
    assert source.raw_format is None
    assert all(f.encoded is None and f.image is not None and f.image.shape == (480, 640, 3)
               for f in frames)


def test_without_deferral_frames_arrive_converted() -> None:
    source, frames = _frames("YUYV", 2, defer=False)
    assert source.raw_format is None
    assert all(f.encoded is None and f.image is not None for f in frames)


def test_gated_pipeline_converts_only_what_it_infers(monkeypatch: pytest.MonkeyPatch) -> None:
    decodes = [0]
    real_decode = EncodedImage.decode

    def counting(self: EncodedImage) -> np.ndarray | None:
        if not self.decoded:
            decodes[0] += 1
        return real_decode(self)

    monkeypatch.setattr(EncodedImage, "decode", counting)
    cfg = PipelineConfig.model_validate({
        "name": "door", "source": _camera("YUYV"), "model": {"path": "fake.tflite"},
        # vivid's text block (its clock) masked, as one masks a camera's timestamp overlay
        "motion": {"enabled": True, "heartbeat_s": 600,
                   "masks": [[[0, 0], [0.75, 0], [0.75, 0.32], [0, 0.32]]]}})
    pipe, sources, transport = gated_pipeline(cfg, OpencvCameraSource)
    _brightness(128)
    pipe.start()
    try:
        deadline = time.monotonic() + 60
        while pipe.status()["frames"] < 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        still = pipe.status()
        still_results = len([m for m in transport.messages if "/results/" in m.topic])
        _brightness(220)  # the whole picture changes: the gate must open
        while pipe.status()["frames"] < still["frames"] + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        pipe.stop()
        _brightness(128)
    st = pipe.status()
    results = [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]
    assert sources and sources[0].raw_format == "yuyv"
    assert still["frames"] >= 30, f"only {still['frames']} frames in 60 s"
    # the still picture: the first frame is inferred, the rest gated without a conversion
    assert still["gated"] >= still["frames"] - 3
    assert len(results) > still_results, "the brightness change opened no inference"
    assert {(r["frame"]["width"], r["frame"]["height"]) for r in results} == {(640, 480)}
    assert st["inferred"] == len(results)
    assert decodes[0] <= st["inferred"], (decodes[0], st)
