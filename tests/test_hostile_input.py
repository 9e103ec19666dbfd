"""Hostile input from every source kind and in model and label files: each case ends in a
counted skip or a clear error, never a crash, a hang or an unbounded allocation.

Frames: truncated JPEGs, empty files, text named .png, 16-bit, grey and 4-channel images, a
160 kB PNG that decodes to 430 MB (images source); a truncated and an empty video file (video
source); an MJPEG stream with truncated JPEG parts (camera source); empty, grey, 4-channel,
16-bit, float and 300-megapixel frames straight into the pipeline (any source). Models: an
empty file, random bytes, a truncated model and labels that are binary junk, through
``edge-agent check-config`` (exit 78, one line, no traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from edge_agent.config import PipelineConfig
from edge_agent.default_models import ensure_default_models
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.sources.conform import MAX_FRAME_PIXELS, conform_image, image_file_pixels
from edge_agent.sources.factory import create_source
from edge_agent.types import Frame
from tests.chaos.mjpeg import MjpegServer
from tests.e2e.agentproc import REPO
from tests.fakes import RecordingTransport, fake_bundle

DEADLINE = 60.0


def _run(source_cfg: dict[str, Any], *, stop_when: Any = None,
         factory: Any = None) -> tuple[Pipeline, RecordingTransport]:
    cfg = PipelineConfig.model_validate({"name": "cam", "source": source_cfg,
                                         "model": {"path": "fake.tflite"}})
    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    policy = PrivacyPolicy(cfg.privacy, "cam", "dev", seal)
    pipe = Pipeline(cfg, fake_bundle(), source_factory=factory or create_source, policy=policy,
                    send=guard.send)
    pipe.start()
    deadline = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < deadline:
            if pipe.state in {"finished", "error"} or (stop_when and stop_when(pipe)):
                break
            time.sleep(0.05)
    finally:
        pipe.stop()
    assert pipe.state != "error", "a pipeline thread crashed"
    return pipe, transport


def _results(transport: RecordingTransport) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]


def test_images_source_skips_every_corrupt_file_and_counts_it(tmp_path: Path) -> None:
    good = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", good)
    assert ok
    (tmp_path / "01_good.jpg").write_bytes(jpeg.tobytes())
    (tmp_path / "02_truncated.jpg").write_bytes(jpeg.tobytes()[:40])
    (tmp_path / "03_empty.jpg").write_bytes(b"")
    (tmp_path / "04_text.png").write_text("not an image at all\n")
    cv2.imwrite(str(tmp_path / "05_16bit.png"), (good[:, :, 0].astype(np.uint16) * 257))
    cv2.imwrite(str(tmp_path / "06_grey.png"), good[:, :, 0])
    cv2.imwrite(str(tmp_path / "07_rgba.png"), np.dstack([good, good[:, :, :1]]))
    cv2.imwrite(str(tmp_path / "08_huge.png"), np.zeros((8000, 8000), np.uint8))  # 64 MP
    assert (tmp_path / "08_huge.png").stat().st_size < 200_000
    assert image_file_pixels(tmp_path / "08_huge.png") == 64_000_000 > MAX_FRAME_PIXELS
    assert image_file_pixels(tmp_path / "01_good.jpg") == 48 * 64
    pipe, transport = _run({"type": "images", "uri": str(tmp_path), "fps": 0})
    frames = [r["frame"] for r in _results(transport)]
    # the good JPEG, the 16-bit, grey and 4-channel PNGs (read as 8-bit BGR); the truncated
    # JPEG decodes partly or not at all, depending on where it was cut
    assert 4 <= len(frames) <= 5
    assert all((f["width"], f["height"]) == (64, 48) for f in frames)
    assert pipe.state == "finished"


def test_truncated_and_empty_video_files(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(2)
    for _ in range(30):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    pipe, transport = _run({"type": "video", "uri": str(cut), "fps": 0})
    assert 0 < len(_results(transport)) < 30 and pipe.state == "finished"
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    pipe, transport = _run({"type": "video", "uri": str(empty), "fps": 0},
                           stop_when=lambda p: p.source_error is not None)
    assert pipe.source_error and "empty.avi" in pipe.source_error
    assert _results(transport) == []


def test_mjpeg_stream_with_truncated_jpegs() -> None:
    server = MjpegServer(fps=20, width=160, height=120).start()
    server.corrupt = 3  # every third JPEG cut to a third of its bytes
    try:
        pipe, _transport = _run({"type": "camera", "uri": server.url},
                               stop_when=lambda p: p.stats.published >= 30)
    finally:
        server.stop()
    assert pipe.stats.published >= 30, pipe.status()
    assert server.frames_sent >= 30


class _OddFrames:
    """A live source handing over one odd frame after another, then good ones."""

    live = True
    dropped = 0
    bad_lines = 0

    def __init__(self, frames: list[Any]) -> None:
        self.frames = frames
        self.i = 0

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Frame | None:
        time.sleep(0.01)
        image = self.frames[min(self.i, len(self.frames) - 1)]
        self.i += 1
        return Frame(index=self.i, ts=time.time(), image=image)

    def close(self) -> None:
        pass


ODD_FRAMES = {
    "zero-size": np.zeros((0, 0, 3), np.uint8),
    "zero-width": np.zeros((10, 0, 3), np.uint8),
    "two channels": np.zeros((10, 10, 2), np.uint8),
    "five channels": np.zeros((10, 10, 5), np.uint8),
    "float": np.zeros((10, 10, 3), np.float32),
    "float nan": np.full((10, 10, 3), np.nan, np.float64),
    "bool": np.zeros((10, 10, 3), bool),
    "4-d": np.zeros((2, 10, 10, 3), np.uint8),
    # 300 megapixels without the memory: a broadcast view of one pixel
    "gigantic": np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 15000, 3)),
}
CONVERTED = {
    "grey": np.full((10, 12), 7, np.uint8),
    "grey 1-channel": np.full((10, 12, 1), 7, np.uint8),
    "bgra": np.full((10, 12, 4), 7, np.uint8),
    "16-bit": np.full((10, 12, 3), 7 * 257, np.uint16),
}


@pytest.mark.parametrize("kind", sorted(ODD_FRAMES))
def test_unusable_frames_are_skipped_and_counted(kind: str) -> None:
    image, problem = conform_image(ODD_FRAMES[kind])
    assert image is None and problem
    good = np.full((24, 32, 3), 30, np.uint8)
    source = _OddFrames([ODD_FRAMES[kind]] * 5 + [good])
    pipe, _ = _run({"type": "camera", "uri": 0}, factory=lambda _c: source,
                   stop_when=lambda p: p.stats.published >= 3)
    assert pipe.stats.bad_frames == 5
    assert pipe.stats.published >= 3


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_convertible_frames_become_bgr(kind: str) -> None:
    image, problem = conform_image(CONVERTED[kind])
    assert problem is None and image is not None
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8
    assert int(image[0, 0, 0]) == 7


# --------------------------------------------------------------------------- model files


def _check_config(tmp_path: Path, model: Path, labels: Path | None = None
                  ) -> subprocess.CompletedProcess[str]:
    model_cfg: dict[str, Any] = {"path": str(model)}
    if labels is not None:
        model_cfg["labels"] = str(labels)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "dev", "state_dir": str(tmp_path / "state"),
        "metrics": {"prometheus": {"enabled": False}},
        "pipelines": [{"name": "cam", "source": {"type": "synthetic"}, "model": model_cfg}]}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_agent", "check-config", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize("kind", ["empty", "random", "truncated", "text"])
def test_corrupt_model_files_are_a_clear_config_error(tmp_path: Path, kind: str) -> None:
    real = ensure_default_models()["face_detection_short_range"]
    model = tmp_path / "model.tflite"
    data = {"empty": b"", "random": np.random.default_rng(3).bytes(50_000),
            "truncated": real.read_bytes()[:30_000], "text": b"hello, model\n" * 100}[kind]
    model.write_bytes(data)
    done = _check_config(tmp_path, model)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "model.tflite" in done.stderr


@pytest.mark.parametrize("kind", ["binary", "empty", "huge_line"])
def test_corrupt_label_files_never_crash(tmp_path: Path, kind: str) -> None:
    model = ensure_default_models()["face_detection_short_range"]
    labels = tmp_path / "labels.txt"
    labels.write_bytes({"binary": np.random.default_rng(4).bytes(5000), "empty": b"",
                        "huge_line": b"x" * 2_000_000 + b"\n"}[kind])
    done = _check_config(tmp_path, model, labels)
    assert "Traceback" not in done.stderr
    if kind == "binary":  # not UTF-8: refused, naming the file
        assert done.returncode == 78 and "labels.txt" in done.stderr, done.stderr
    else:  # text, however odd: accepted
        assert done.returncode == 0, done.stdout + done.stderr
