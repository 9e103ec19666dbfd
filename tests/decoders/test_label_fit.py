"""Label files that do not fit the model are refused where the model says how many classes it
has (classification outputs, yolo heads, one-class anchors detectors); at run time an id the
file does not name is published as the id, counted and warned about once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.decoders.anchors import AnchorsDecoder
from edge_agent.decoders.classification import ClassificationDecoder
from edge_agent.decoders.labels import Labels, LabelsMismatchError, Namer, parse_labels
from edge_agent.decoders.ssd import SsdDecoder
from edge_agent.decoders.yolo import YoloDecoder
from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.types import Transform
from tests.decoders.signatures import signature, spec

COCO80 = [f"coco{i}" for i in range(80)]


def labels(names: list[str]) -> Labels:
    return parse_labels(names, "labels.txt")


def test_classification_too_few_and_too_many() -> None:
    sig = signature(spec((1, 10)))
    assert len(ClassificationDecoder(sig, labels([f"c{i}" for i in range(10)]), {}, 0.1)
               .labels) == 10
    with pytest.raises(LabelsMismatchError, match=r"9 names\) for 10 classes \(too few"):
        ClassificationDecoder(sig, labels([f"c{i}" for i in range(9)]), {}, 0.1)
    with pytest.raises(LabelsMismatchError, match=r"12 names\) for 10 classes \(too many"):
        ClassificationDecoder(sig, labels([f"c{i}" for i in range(12)]), {}, 0.1)
    # a background line in front still fits; an explicit offset is the user's call
    fits = ClassificationDecoder(sig, labels(["background", *[f"c{i}" for i in range(10)]]),
                                 {}, 0.1)
    assert fits.labels.get(0) == "c0"
    ClassificationDecoder(sig, labels([f"c{i}" for i in range(12)]), {"label_offset": 2}, 0.1)


def test_yolo_class_count() -> None:
    sig = signature(spec((1, 6300, 85)))  # YOLOv5: 4 box + 1 objectness + 80 classes
    assert YoloDecoder(sig, labels(COCO80), {}, 0.3).num_classes == 80
    with pytest.raises(LabelsMismatchError, match="for 80 classes"):
        YoloDecoder(sig, labels(COCO80[:20]), {}, 0.3)
    with pytest.raises(LabelsMismatchError, match="for 80 classes"):
        YoloDecoder(sig, labels([f"imagenet{i}" for i in range(1001)]), {}, 0.3)


def test_one_class_anchors_detector_refuses_a_list() -> None:
    rt = load_runtime(ensure_default_models()[DEFAULT_MODEL])
    try:
        sig = rt.signature
    finally:
        rt.close()
    assert AnchorsDecoder(sig, labels(["face"]), {}, 0.5).label == "face"
    with pytest.raises(LabelsMismatchError, match="4 names, but an anchors model detects one"):
        AnchorsDecoder(sig, labels(["person", "bicycle", "car", "motorcycle"]), {}, 0.5)
    with pytest.raises(LabelsMismatchError, match="0 names"):
        AnchorsDecoder(sig, labels(["background"]), {}, 0.5)


def _check_config(tmp_path: Path, label_lines: list[str],
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    lab = tmp_path / "labels.txt"
    lab.write_text("\n".join(label_lines) + "\n")
    cfg = tmp_path / "config.yaml"
    model = ensure_default_models()[DEFAULT_MODEL]
    cfg.write_text(f"pipelines:\n  - name: door\n    source: {{type: synthetic, frames: 5}}\n"
                   f"    model:\n      path: {model}\n      labels: {lab}\n")
    code = main(["check-config", "-c", str(cfg)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("case", "lines", "expected"), [
    ("too many", ["face", "hand"], "2 names"),
    ("too few", ["background"], "0 names"),
    ("wrong model kind", COCO80, "80 names"),
], ids=["too-many", "too-few", "wrong-model-kind"])
def test_check_config_names_the_labels_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           case: str, lines: list[str], expected: str) -> None:
    code, err = _check_config(tmp_path, lines, capsys)
    assert code == 78, err
    # one problem line (stderr may also carry logging noise from handlers earlier tests left)
    problems = [line for line in err if "pipelines[" in line and ": " in line
                and line.startswith(str(tmp_path))]
    assert len(problems) == 1, err
    line = problems[0]
    assert ":6 pipelines[0].model.labels: label file" in line and expected in line, err
    assert "one class" in line, err


def test_check_config_accepts_the_model_own_labels(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check_config(tmp_path, ["face"], capsys)
    assert code == 0, err


def test_unlabeled_class_id_is_counted_and_warned_once(
        caplog: pytest.LogCaptureFixture) -> None:
    namer = Namer(labels(["person", "n/a", "car"]))
    caplog.set_level(logging.WARNING, logger="edge_agent.decoders.labels")
    assert [namer(i) for i in (0, 2, 1, 7, 7, 1)] == ["person", "car", "1", "7", "7", "1"]
    assert namer.unlabeled == 4
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "class 1" in warned[0] and "class 7" in warned[1], warned
    assert Namer(Labels())(5) == "5" and Namer(Labels()).unlabeled == 0


def test_ssd_publishes_an_unlabeled_id_as_the_id_not_a_neighbour() -> None:
    sig = signature(spec((1, 10, 4), name="boxes", index=0),
                    spec((1, 10), name="classes", index=1),
                    spec((1, 10), name="scores", index=2), spec((1,), name="count", index=3))
    dec = SsdDecoder(sig, labels(["person", "bicycle"]), {"label_offset": 0}, 0.5)
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, :2] = [[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]]
    classes = np.zeros((1, 10), np.float32)
    classes[0, :2] = [1, 5]
    scores = np.zeros((1, 10), np.float32)
    scores[0, :2] = [0.9, 0.8]
    inf = dec.decode([boxes, classes, scores, np.array([2], np.float32)], Transform())
    assert [d.label for d in inf.detections] == ["bicycle", "5"]
    assert dec.name.unlabeled == 1
