"""OpencvVideoSource on real MJPG files written with OpenCV."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from edge_agent.config import VideoSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.camera import OpencvVideoSource
from tests.sources.clips import frame_number, write_numbered_video


def _video(uri: Path | str, **kw: object) -> OpencvVideoSource:
    return OpencvVideoSource(VideoSourceConfig(type="video", uri=str(uri), **kw))


def _drain(source: OpencvVideoSource, limit: int = 1000) -> list[tuple[int, int]]:
    out = []
    with pytest.raises(EOFError):
        for _ in range(limit):
            frame = source.read(5.0)
            assert frame is not None and frame.image is not None
            out.append((frame.index, frame_number(frame.image)))
    return out


def test_fps_0_delivers_every_frame_in_order(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "a.avi", 30)
    source = _video(path, fps=0)
    source.open()
    try:
        frames = _drain(source)
        assert frames == [(i, i) for i in range(30)]
        assert source.live is False and source.dropped == 0
        with pytest.raises(EOFError):  # stays finished
            source.read(0.1)
    finally:
        source.close()
        source.close()  # twice is fine


def test_loop_replays_and_index_keeps_rising(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "a.avi", 12)
    source = _video(path, fps=0, loop=True)
    source.open()
    try:
        got = []
        for _ in range(30):
            frame = source.read(5.0)
            assert frame is not None and frame.image is not None
            got.append((frame.index, frame_number(frame.image)))
        assert got == [(i, i % 12) for i in range(30)]
        assert source.loops == 2
    finally:
        source.close()


def test_paced_at_the_files_own_fps(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "slow.avi", 3, fps=2.0)
    source = _video(path)  # fps None: the file's 2 fps
    source.open()
    try:
        assert source.native_fps == pytest.approx(2.0)
        first = source.read(5.0)
        assert first is not None and first.index == 0
        # the next frame is due 0.5 s later: not within a zero timeout
        assert source.read(0.0) is None
        second = source.read(5.0)
        assert second is not None and second.index == 1 and frame_number(second.image) == 1
    finally:
        source.close()


def test_explicit_fps_overrides_the_file(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "a.avi", 3, fps=100.0)
    source = _video(path, fps=1.0)
    source.open()
    try:
        assert source.read(5.0) is not None
        assert source.read(0.0) is None  # due 1 s later, although the file says 100 fps
    finally:
        source.close()


def test_close_interrupts_a_paced_wait(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "slow.avi", 3, fps=0.2)  # 5 s between frames
    source = _video(path)
    source.open()
    assert source.read(5.0) is not None
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.append(source.read(30.0)))
    reader.start()
    source.close()
    reader.join(5.0)
    assert not reader.is_alive()
    assert results == [None]


def test_missing_file_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    source = _video(tmp_path / "nope.avi")
    with pytest.raises(SourceError, match=r"nope\.avi"):
        source.open()
    source.close()


def test_unreadable_file_is_a_source_error_naming_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.avi"
    bad.write_bytes(b"this is not a video" * 100)
    source = _video(bad)
    with pytest.raises(SourceError, match=r"garbage\.avi"):
        source.open()
    source.close()


def test_read_before_open_is_a_source_error(tmp_path: Path) -> None:
    source = _video(write_numbered_video(tmp_path / "a.avi", 2))
    with pytest.raises(SourceError):
        source.read(0.1)


def test_file_uri_scheme(tmp_path: Path) -> None:
    path = write_numbered_video(tmp_path / "a.avi", 4)
    source = _video(f"file://{path}", fps=0)
    source.open()
    try:
        assert [n for _, n in _drain(source)] == [0, 1, 2, 3]
    finally:
        source.close()
