"""MotionGate on generated clips with known ground truth, and on hand-made frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import MotionConfig, VideoSourceConfig
from edge_agent.motion import MotionGate
from edge_agent.sources.camera import OpencvVideoSource
from edge_agent.sources.synthetic import make_background, write_clip

FPS = 10


def _decode(path: Path) -> list[np.ndarray]:
    source = OpencvVideoSource(VideoSourceConfig(type="video", uri=str(path), fps=0))
    source.open()
    frames = []
    try:
        while True:
            frame = source.read(5.0)
            assert frame is not None and frame.image is not None
            frames.append(frame.image)
    except EOFError:
        pass
    finally:
        source.close()
    return frames


@pytest.mark.parametrize(("seed", "noise"), [(1, 2.0), (2, 4.0), (3, 3.0)])
def test_gate_never_misses_a_motion_episode(tmp_path: Path, seed: int, noise: float) -> None:
    episodes = [(2.0, 3.0), (6.0, 7.5), (12.0, 12.3), (16.0, 19.0)]
    truth = write_clip(tmp_path / "clip.avi", width=640, height=480, fps=FPS, seconds=24,
                       episodes=episodes, seed=seed, noise=noise)
    frames = _decode(tmp_path / "clip.avi")
    assert len(frames) == 240
    gate = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9))
    decisions = [gate.check(image, i / FPS) for i, image in enumerate(frames)]

    for first, last in truth:  # every frame of every episode reaches the model
        missed = [i for i in range(first, last + 1) if not decisions[i]]
        assert not missed, f"episode {first}-{last}: gate said no on frames {missed}"

    # static parts: quiet, apart from the first frame (no background yet) and a short
    # settling tail after each episode (the parked object is blended in, then the hold)
    tail = 12
    busy = {i for a, b in truth for i in range(a, b + 1 + tail)} | {0}
    static_yes = [i for i, yes in enumerate(decisions) if yes and i not in busy]
    assert not static_yes
    assert sum(decisions) < 0.4 * len(decisions)
    assert gate.motion_frames >= sum(b - a + 1 for a, b in truth)


def _scene(width: int = 320, height: int = 240) -> np.ndarray:
    return make_background(width, height, np.random.default_rng(5))


def _with_box(image: np.ndarray, x: int, y: int, w: int = 30, h: int = 50) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (x, y), (x + w, y + h), (30, 30, 230), -1)
    return out


def test_heartbeat_on_a_static_scene() -> None:
    gate = MotionGate(MotionConfig(enabled=True, heartbeat_s=5.0))
    scene = _scene()
    yes_at = [t for t in range(30) if gate.check(scene, float(t))]
    assert yes_at == [0, 5, 10, 15, 20, 25]
    assert gate.heartbeats == 6 and gate.motion_frames == 0  # frame 0: the first heartbeat


def test_hold_after_motion_ends() -> None:
    gate = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9), hold_frames=3)
    scene = _scene()
    for t in range(5):
        gate.check(scene, t)
    moving = [gate.check(_with_box(scene, 20 + 15 * k, 100), 5 + k) for k in range(5)]
    assert all(moving)
    # the box is gone: the background needs a few frames to forget it, then three of hold
    after = [gate.check(scene, 10 + k) for k in range(40)]
    assert after[:3] == [True, True, True]
    assert not any(after[-20:])


def test_masked_area_is_ignored() -> None:
    mask = ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))  # the left half
    masked = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9, masks=(mask,)))
    plain = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9))
    scene = _scene()
    frames = [scene] * 3 + [_with_box(scene, 10 + 8 * k, 80) for k in range(10)]  # x < 160
    masked_yes = [masked.check(f, t) for t, f in enumerate(frames)]
    plain_yes = [plain.check(f, t) for t, f in enumerate(frames)]
    assert masked_yes == [True] + [False] * 12
    assert all(plain_yes[3:])


def test_motion_boxes_locate_the_change() -> None:
    gate = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9))
    scene = _scene()
    gate.check(scene, 0)
    assert gate.motion_boxes() == []
    gate.check(_with_box(scene, 200, 100), 1)
    boxes = gate.motion_boxes()
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    assert x0 < 200 / 320 + 0.03 and x1 > 230 / 320 - 0.03
    assert y0 < 100 / 240 + 0.03 and y1 > 150 / 240 - 0.03


def test_lights_on_is_motion_then_settles() -> None:
    gate = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9))
    scene = _scene()
    for t in range(3):
        gate.check(scene, t)
    brighter = cv2.add(scene, np.full_like(scene, 60))
    decisions = [gate.check(brighter, 3 + k) for k in range(20)]
    assert decisions[0] is True
    assert not any(decisions[-8:])


def test_new_frame_size_restarts_the_background() -> None:
    gate = MotionGate(MotionConfig(enabled=True, heartbeat_s=1e9))
    gate.check(_scene(320, 240), 0)
    gate.check(_scene(320, 240), 1)
    assert gate.check(_scene(640, 360), 2) is True  # a new scene: its first frame passes
    assert gate.check(_scene(640, 360), 3) is False
    assert gate.counters()["checks"] == 4
    gate.reset()
    assert gate.check(_scene(640, 360), 4) is True
