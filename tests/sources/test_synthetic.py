"""SyntheticSource and the clip generators."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config import SyntheticSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.synthetic import SyntheticSource, write_clip, write_crossing_clip


def _synthetic(**kw: object) -> SyntheticSource:
    kw.setdefault("fps", 0)
    return SyntheticSource(SyntheticSourceConfig(type="synthetic", **kw))


def _frames(source: SyntheticSource, n: int) -> list[np.ndarray]:
    source.open()
    try:
        out = []
        for _ in range(n):
            frame = source.read(1.0)
            assert frame is not None and frame.image is not None
            out.append(frame.image)
        return out
    finally:
        source.close()


def test_same_seed_gives_identical_frames() -> None:
    a = _frames(_synthetic(seed=7, width=320, height=240), 5)
    b = _frames(_synthetic(seed=7, width=320, height=240), 5)
    c = _frames(_synthetic(seed=8, width=320, height=240), 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (240, 320, 3) and a[0].dtype == np.uint8
    assert not np.array_equal(a[0], a[1])  # things move


@pytest.mark.parametrize("scenario", ["shapes", "people", "mixed", None])
def test_scenarios_render_their_objects(scenario: str | None) -> None:
    source = _synthetic(uri=scenario, objects=4)
    kinds = {s.kind for s, *_ in source.sprites}
    expected = {"shapes": {"rect", "ellipse"}, "people": {"person"}}.get(
        scenario or "mixed", {"person", "rect", "ellipse"})
    assert kinds == expected
    for box in source.boxes(3):
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def test_unknown_scenario() -> None:
    with pytest.raises(ValidationError, match="unknown synthetic scene"):  # the config refuses it
        _synthetic(uri="dragons")


def test_frames_then_eof_or_loop() -> None:
    source = _synthetic(frames=3, width=160, height=120)
    source.open()
    try:
        assert [source.read(1.0).index for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        with pytest.raises(EOFError):
            source.read(1.0)
    finally:
        source.close()
    looping = _synthetic(frames=3, loop=True, width=160, height=120)
    frames = _frames(looping, 7)
    assert np.array_equal(frames[0], frames[3]) and np.array_equal(frames[1], frames[4])


def test_read_before_open() -> None:
    with pytest.raises(SourceError, match="not open"):
        _synthetic().read(0.1)


def test_write_clip_motion_only_inside_episodes(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    truth = write_clip(path, width=320, height=240, fps=10, seconds=6,
                       episodes=[(1.0, 2.0), (4.0, 4.5)], seed=1)
    assert truth == [(10, 19), (40, 44)]
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image.astype(np.int16))
    cap.release()
    assert len(frames) == 60
    moving = {i for a, b in truth for i in range(a, b + 1)}
    for i in range(1, 60):
        changed = (np.abs(frames[i] - frames[i - 1]).max(axis=2) > 40).mean()
        if i in moving:
            assert changed > 0.002, i
        else:
            assert changed < 0.0005, i


def test_write_clip_rejects_overlapping_episodes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="overlaps"):
        write_clip(tmp_path / "x.avi", seconds=5, episodes=[(1, 3), (2, 4)])


def test_write_crossing_clip_truth(tmp_path: Path) -> None:
    truth = write_crossing_clip(tmp_path / "x.avi", width=320, height=240, seconds=3)
    assert [t.object_id for t in truth] == [1, 2]
    red, blue = truth
    assert len(red.boxes) == len(blue.boxes) == 30
    assert red.boxes[0][0] < blue.boxes[0][0] and red.boxes[29][0] > blue.boxes[29][0]
