"""Label files: every format models ship with, and alignment with a model's classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.decoders.labels import NO_LABELS, load_labels, parse_labels
from edge_agent.errors import ModelError


def write(tmp_path: Path, text: str, name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_plain_lines(tmp_path: Path) -> None:
    labels = load_labels(write(tmp_path, "person\nbicycle\ncar\n"))
    assert [labels.get(i) for i in range(3)] == ["person", "bicycle", "car"]
    assert len(labels) == 3 and not labels.has_background


def test_id_space_lines_with_gaps(tmp_path: Path) -> None:
    labels = load_labels(write(tmp_path, "0 person\n1 bicycle\n3 motorcycle\n"))
    assert labels.get(0) == "person" and labels.get(3) == "motorcycle"
    assert labels.get(2) == "2"  # gap falls back to the id
    assert len(labels) == 4 and labels.count == 3


def test_id_colon_lines_with_multiword_names(tmp_path: Path) -> None:
    labels = load_labels(write(tmp_path, "0: background\n1: tench, Tinca tinca\n2:goldfish\n"))
    assert labels.get(1) == "tench, Tinca tinca" and labels.get(2) == "goldfish"
    assert labels.has_background


def test_na_and_placeholder_gaps(tmp_path: Path) -> None:
    labels = load_labels(write(tmp_path, "???\nperson\nn/a\ncar\n"))
    assert labels.has_background
    assert labels.get(2) == "2" and labels.get(3) == "car"
    assert labels.compact().names == ("person", "car")


def test_notes_after_an_empty_line_are_not_labels(tmp_path: Path) -> None:
    labels = load_labels(write(tmp_path, "background\ncat\n\nand 255 is the ignore label\n"))
    assert labels.names == ("background", "cat")


def test_comments_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_bytes("\ufeff# my labels\r\nperson\r\ncar\r\n".encode())
    assert load_labels(path).names == ("person", "car")


def test_none_gives_ids() -> None:
    assert load_labels(None) is NO_LABELS
    assert NO_LABELS.get(7) == "7"


def test_unreadable_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read label file"):
        load_labels(tmp_path / "missing.txt")
    bad = tmp_path / "bin.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ModelError):
        load_labels(bad)


def test_fit_shifts_a_background_line() -> None:
    labels = parse_labels(["background", "a", "b", "c"])
    assert labels.fit(4).get(0) == "background"  # same length: as is (1001-class imagenet)
    assert labels.fit(3).get(0) == "a"  # one extra background line: shifted


def test_fit_compacts_na_gaps_for_80_class_coco() -> None:
    lines = ["person", "bicycle", "n/a", "car"]
    assert parse_labels(lines).fit(3).names == ("person", "bicycle", "car")
    placeholder = parse_labels(["???", "person", "???", "car"])
    assert placeholder.fit(2).names == ("person", "car")


def test_fit_explicit_settings_win() -> None:
    labels = parse_labels(["x", "a", "n/a", "b"])
    assert labels.fit(4, offset=1).get(0) == "a"
    assert labels.fit(4, compact=True).names == ("x", "a", "b")
    assert labels.fit(3, compact=False).names == labels.names


def test_real_coco_label_files_agree(shared: Path) -> None:
    plain = load_labels(shared / "coco_labels.txt")
    placeholder = load_labels(shared / "coco_ssd_labelmap_with_placeholders.txt")
    assert len(plain) == 90 and plain.count == 80
    assert plain.compact().names == placeholder.compact().names
    assert plain.get(17) == placeholder.shifted(1).get(17) == "dog"
