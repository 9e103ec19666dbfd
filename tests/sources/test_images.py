"""ImageFolderSource on real image files written with OpenCV."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.config import ImagesSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.images import ImageFolderSource
from tests.sources.clips import frame_number, write_numbered_image


def _images(uri: Path | str, **kw: object) -> ImageFolderSource:
    return ImageFolderSource(ImagesSourceConfig(type="images", uri=str(uri), **kw))


def _numbers(source: ImageFolderSource, count: int | None = None) -> list[int]:
    out: list[int] = []
    try:
        while count is None or len(out) < count:
            frame = source.read(5.0)
            assert frame is not None and frame.image is not None
            assert frame.index == len(out)
            out.append(frame_number(frame.image))
    except EOFError:
        assert count is None, "ended early"
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five PNGs written out of order (sorted names: n0 < n1 < ... < n4), plus a non-image."""
    d = tmp_path / "shots"
    d.mkdir()
    for i in (3, 0, 4, 1, 2):
        write_numbered_image(d / f"n{i}.png", i)
    (d / "notes.txt").write_text("not an image")
    return d


def test_folder_in_sorted_order(folder: Path) -> None:
    source = _images(folder, fps=0)
    source.open()
    try:
        assert _numbers(source) == [0, 1, 2, 3, 4]
        assert source.live is False and source.dropped == 0 and source.skipped == 0
    finally:
        source.close()


def test_glob_selects_and_sorts(folder: Path) -> None:
    write_numbered_image(folder / "x9.bmp", 9)
    source = _images(folder / "n[13]*.png", fps=0)
    source.open()
    try:
        assert _numbers(source) == [1, 3]
    finally:
        source.close()


def test_loop(folder: Path) -> None:
    source = _images(folder, fps=0, loop=True)
    source.open()
    try:
        assert _numbers(source, 12) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
        assert source.loops == 2
    finally:
        source.close()


def test_unreadable_image_is_skipped_with_a_warning_and_counted(
        folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "n2.png").write_bytes(b"\x89PNG broken")
    source = _images(folder, fps=0, loop=True)
    source.open()
    with caplog.at_level(logging.WARNING, logger="edge_agent.sources.images"):
        try:
            assert _numbers(source, 8) == [0, 1, 3, 4, 0, 1, 3, 4]
        finally:
            source.close()
    assert source.skipped == 1
    warnings = [r for r in caplog.records if "n2.png" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per loop


def test_no_readable_image_is_a_source_error(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"garbage")
    source = _images(tmp_path, fps=0, loop=True)
    source.open()
    try:
        with pytest.raises(SourceError, match="none of the 2 files"):
            source.read(1.0)
    finally:
        source.close()


def test_empty_folder_is_a_source_error_saying_so(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="has no images"):
        _images(tmp_path).open()


def test_missing_folder_and_empty_glob(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        _images(tmp_path / "missing").open()
    with pytest.raises(SourceError, match="no file matches"):
        _images(tmp_path / "*.png").open()


def test_default_pace_is_one_image_per_second(folder: Path) -> None:
    source = _images(folder)
    source.open()
    try:
        assert source.read(5.0) is not None
        assert source.read(0.0) is None  # the next one is due a second later
    finally:
        source.close()
    assert source.read(1.0) is None  # closed: nothing more, no error
