"""Deferred decoding for a motion gate: JPEG DCT scaling and raw-plane subsampling.

The gate must reach the same decisions on reduced decodes as on full ones: the same motion
episodes on the synthetic clips of tests/test_motion.py, and a gated pipeline must publish a
result in every episode while decoding only the frames the model sees.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import ImagesSourceConfig, MotionConfig, PipelineConfig, VideoSourceConfig
from edge_agent.errors import SourceError
from edge_agent.motion import MotionGate
from edge_agent.sources.camera import OpencvVideoSource
from edge_agent.sources.conform import image_file_pixels
from edge_agent.sources.encoded import EncodedImage, jpeg_size, reduce_factor
from edge_agent.sources.images import ImageFolderSource
from edge_agent.sources.synthetic import write_clip
from edge_agent.types import Frame
from tests.fakes import gated_pipeline

FPS = 10
EPISODES = [(2.0, 3.0), (6.0, 7.5), (12.0, 12.3), (16.0, 19.0)]  # as tests/test_motion.py


def _frames(source: OpencvVideoSource | ImageFolderSource) -> list[Frame]:
    source.open()
    frames = []
    try:
        while True:
            frame = source.read(5.0)
            assert frame is not None
            frames.append(frame)
    except EOFError:
        pass
    finally:
        source.close()
    return frames


def _motion_runs(gate: MotionGate, images: list[np.ndarray]) -> list[tuple[int, int]]:
    """The runs of frames the gate found motion in (heartbeats and hold left out)."""
    runs: list[tuple[int, int]] = []
    for i, image in enumerate(images):
        gate.check(image, i / FPS)
        if gate.last_fraction >= gate.cfg.min_area:
            if runs and runs[-1][1] == i - 1:
                runs[-1] = (runs[-1][0], i)
            else:
                runs.append((i, i))
    return runs


@pytest.mark.parametrize(("seed", "noise"), [(1, 2.0), (2, 4.0), (3, 3.0)])
def test_gate_finds_the_same_episodes_on_dct_scaled_decodes(tmp_path: Path, seed: int,
                                                            noise: float) -> None:
    clip = tmp_path / "clip.avi"
    truth = write_clip(clip, width=640, height=480, fps=FPS, seconds=24, episodes=EPISODES,
                       seed=seed, noise=noise)
    full = [f.image for f in _frames(OpencvVideoSource(
        VideoSourceConfig(type="video", uri=str(clip), fps=0)))]
    deferred = OpencvVideoSource(VideoSourceConfig(type="video", uri=str(clip), fps=0))
    deferred.defer_decode = True
    packets = _frames(deferred)
    assert deferred.raw_packets
    assert len(packets) == len(full) == 240
    assert all(f.image is None and f.encoded is not None for f in packets)
    cfg = MotionConfig(enabled=True, heartbeat_s=1e9)
    reduced = []
    for f in packets:
        assert f.encoded is not None
        small = f.encoded.reduced(cfg.width)
        assert small is not None and small.shape == (120, 160, 3)  # 1/4: DCT scaling
        reduced.append(small)

    runs_full = _motion_runs(MotionGate(cfg), [im for im in full if im is not None])
    runs_reduced = _motion_runs(MotionGate(cfg), reduced)
    assert len(runs_full) == len(runs_reduced) == len(truth)
    for (a0, a1), (b0, b1), (t0, t1) in zip(runs_full, runs_reduced, truth, strict=True):
        assert a0 == b0 == t0  # every episode starts on the same frame
        assert t1 <= a1 and t1 <= b1  # and is followed to its end
        assert abs(a1 - b1) <= 1  # the parked object's settling tail: within a frame


def test_full_decode_of_a_packet_is_the_frame(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_clip(clip, fps=FPS, seconds=1.0, episodes=[(0.2, 0.6)])
    full = [f.image for f in _frames(OpencvVideoSource(
        VideoSourceConfig(type="video", uri=str(clip), fps=0)))]
    src = OpencvVideoSource(VideoSourceConfig(type="video", uri=str(clip), fps=0))
    src.defer_decode = True
    for a, f in zip(full, _frames(src), strict=True):
        assert f.encoded is not None and (f.width, f.height) == (640, 480)
        b = f.encoded.decode()
        assert a is not None and b is not None and a.shape == b.shape
        # FFmpeg's and libjpeg's IDCT and colour conversion differ by a level or two
        assert float(np.mean(cv2.absdiff(a, b))) < 2.0


def test_a_non_mjpeg_file_is_decoded_as_before(tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_clip(clip, fps=FPS, seconds=1.0, episodes=[(0.2, 0.6)], fourcc="FFV1")
    src = OpencvVideoSource(VideoSourceConfig(type="video", uri=str(clip), fps=0))
    src.defer_decode = True
    frames = _frames(src)
    assert not src.raw_packets
    assert len(frames) == 10 and all(f.image is not None for f in frames)


def test_image_folder_hands_jpegs_over_encoded_and_other_files_decoded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 320, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    (tmp_path / "c.jpg").write_bytes(b"not a jpeg at all")
    src = ImageFolderSource(ImagesSourceConfig(type="images", uri=str(tmp_path), fps=0))
    src.defer_decode = True
    frames = _frames(src)
    assert len(frames) == 2 and src.skipped == 1  # the broken file is reported as before
    jpeg, png = frames
    assert jpeg.image is None and jpeg.encoded is not None
    assert (jpeg.width, jpeg.height) == (320, 240)
    small = jpeg.encoded.reduced(160)
    assert small is not None and small.shape == (120, 160, 3)
    assert png.image is not None and png.encoded is None


def test_jpeg_header_size_matches_the_decoder() -> None:
    for w, h in [(640, 480), (1281, 719), (17, 9)]:
        ok, data = cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))
        assert ok
        assert jpeg_size(data.tobytes()) == (w, h)
    assert jpeg_size(b"\xff\xd8\xff") is None
    assert jpeg_size(b"\x89PNG....") is None
    assert EncodedImage.jpeg(b"garbage") is None


def test_image_file_pixels_reads_the_jpeg_header(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((30, 50, 3), np.uint8))
    assert image_file_pixels(tmp_path / "a.jpg") == 1500


def test_reduce_factor() -> None:
    assert reduce_factor(640, 160) == 4
    assert reduce_factor(1920, 160) == 8
    assert reduce_factor(320, 160) == 2
    assert reduce_factor(200, 160) == 1


@pytest.mark.parametrize("kind", ["yuyv", "nv12"])
@pytest.mark.parametrize("picture", ["noise", "bars"])
def test_raw_planes_subsampled_match_the_full_conversion(kind: str, picture: str) -> None:
    rng = np.random.default_rng(1)
    bgr = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), np.uint8), (31, 31), 0)
    if picture == "bars":  # saturated colours, black and white: the ends of the range
        colours = [(255, 255, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 0, 255),
                   (0, 0, 255), (255, 0, 0), (0, 0, 0)]
        bgr = np.repeat(np.array(colours, np.uint8)[None], 480, axis=0).repeat(80, axis=1)
    yuv_i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)  # (720, 640): Y, then U, then V
    y = yuv_i420[:480]
    u = yuv_i420[480:600].reshape(240, 320)
    v = yuv_i420[600:].reshape(240, 320)
    if kind == "nv12":
        uv = np.dstack((u, v)).reshape(240, 640)
        encoded = EncodedImage.nv12(np.vstack((y, uv)).reshape(-1), 640, 480)
    else:
        packed = np.empty((480, 640, 2), np.uint8)
        packed[..., 0] = y
        packed[:, 0::2, 1] = np.repeat(u, 2, axis=0)
        packed[:, 1::2, 1] = np.repeat(v, 2, axis=0)
        encoded = EncodedImage.yuyv(packed.reshape(-1), 640, 480)
    full = encoded.decode()
    small = encoded.reduced(160)
    assert full is not None and full.shape == (480, 640, 3)
    assert small is not None and small.shape == (120, 160, 3)
    # the subsampled copy shows the same picture as the full conversion shrunk
    shrunk = cv2.resize(full, (160, 120), interpolation=cv2.INTER_AREA)
    assert float(np.mean(cv2.absdiff(shrunk, small))) < 4.0


def test_gated_pipeline_on_mjpeg_reports_every_episode_and_decodes_only_what_it_infers(
        tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    truth = write_clip(clip, fps=FPS, seconds=24, episodes=EPISODES, seed=1)
    cfg = PipelineConfig.model_validate({
        "name": "door", "source": {"type": "video", "uri": str(clip), "fps": 0},
        "model": {"path": "fake.tflite"}, "motion": {"enabled": True, "heartbeat_s": 10}})
    pipe, sources, transport = gated_pipeline(cfg, OpencvVideoSource)
    pipe.start()
    pipe.join(60)
    pipe.stop()
    assert sources and sources[0].raw_packets
    res = [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]
    published = {r["frame"]["index"] for r in res}
    for first, last in truth:
        assert published & set(range(first, last + 1)), f"episode {first}-{last} not reported"
    assert {(r["frame"]["width"], r["frame"]["height"]) for r in res} == {(640, 480)}
    st = pipe.status()
    assert st["state"] == "finished"
    assert st["frames"] == 240
    assert st["gated"] + len(res) == 240 and st["gated"] > 120


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00"])
def test_an_unreadable_file_with_deferred_decoding_is_a_clear_error(tmp_path: Path,
                                                                    content: bytes) -> None:
    clip = tmp_path / "broken.avi"
    clip.write_bytes(content)  # the probe capture does not open: FOURCC reads as -1
    src = OpencvVideoSource(VideoSourceConfig(type="video", uri=str(clip), fps=0))
    src.defer_decode = True
    with pytest.raises(SourceError, match="cannot be read"):
        src.open()
    assert not src.raw_packets
