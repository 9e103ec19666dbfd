"""YoloDecoder on synthetic YOLOv5 / YOLOv8 heads, quantised and float."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.decoders.labels import parse_labels
from edge_agent.decoders.yolo import YoloDecoder
from edge_agent.errors import ModelError
from edge_agent.types import IDENTITY
from tests.decoders.signatures import iou, letterbox_transform, signature, spec

NAMES = parse_labels(["person", "n/a", "car", "dog"])  # 3 real classes, one gap
SCALE, ZP = 0.0044834911823272705, 3


def v5_rows(n: int = 1000) -> np.ndarray:
    """Float (n, 5+3) rows: two overlapping persons, one car, noise elsewhere (normalised)."""
    rows = np.zeros((n, 8), np.float32)
    rows[:, :4] = [0.5, 0.5, 0.1, 0.1]
    rows[:, 4] = 0.05
    rows[0] = [0.30, 0.40, 0.20, 0.40, 0.95, 0.90, 0.05, 0.0]  # person
    rows[1] = [0.31, 0.41, 0.20, 0.40, 0.90, 0.85, 0.05, 0.0]  # same person, suppressed
    rows[2] = [0.31, 0.41, 0.20, 0.40, 0.90, 0.05, 0.80, 0.0]  # a car on the person: kept
    rows[3] = [0.80, 0.20, 0.10, 0.10, 0.30, 0.90, 0.0, 0.0]  # below threshold (0.27)
    return rows


def quantise(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x / SCALE) + ZP, 0, 255).astype(np.uint8)


def test_v5_quantised_zero_point_3_class_aware_nms() -> None:
    q = quantise(v5_rows())[None]
    sig = signature(spec((1, 1000, 8), "uint8", SCALE, ZP), input_shape=(1, 640, 640, 3),
                    input_dtype="uint8")
    dec = YoloDecoder(sig, NAMES, {}, 0.5)
    assert dec.version == 5 and dec.num_classes == 3 and dec.labels.names == ("person", "car",
                                                                              "dog")
    inf = dec.decode([q], IDENTITY)
    assert [d.label for d in inf.detections] == ["person", "car"]
    assert inf.detections[0].score == pytest.approx(0.95 * 0.90, abs=0.01)
    assert iou(inf.detections[0].box, (0.2, 0.2, 0.4, 0.6)) > 0.95


def test_zero_point_matters() -> None:
    # a row whose stored objectness equals the zero point is 0, not 3 * scale
    rows = v5_rows()
    q = quantise(rows)
    q[4:, 4] = ZP
    sig = signature(spec((1, 1000, 8), "uint8", SCALE, ZP))
    inf = YoloDecoder(sig, NAMES, {}, 0.01).decode([q[None]], IDENTITY)
    assert all(d.score > 0.2 for d in inf.detections)


def test_v8_transposed_pixel_coordinates_and_letterbox() -> None:
    n = 2100
    head = np.zeros((4 + 3, n), np.float32)
    head[:4] = np.array([[320], [320], [10], [10]])
    # a dog at pixel centre (320, 320), 128 x 64 px, in a 640 input
    head[:, 7] = [320, 320, 128, 64, 0.0, 0.0, 0.88]
    sig = signature(spec((1, 7, n)), input_shape=(1, 640, 640, 3))
    dec = YoloDecoder(sig, parse_labels(["person", "car", "dog"]), {}, 0.5)
    assert dec.version == 8 and dec.transposed
    # a 1280x720 frame letterboxed into 640: the model's vertical band is 0.21875..0.78125
    tr = letterbox_transform(1280, 720, 640)
    inf = dec.decode([head[None]], tr)
    assert [(d.label, round(d.score, 2)) for d in inf.detections] == [("dog", 0.88)]
    box = inf.detections[0].box
    np.testing.assert_allclose(box, (0.4, (0.45 - 0.21875) / 0.5625, 0.6,
                                     (0.55 - 0.21875) / 0.5625), atol=1e-5)


def test_label_options() -> None:
    sig = signature(spec((1, 1000, 8)))
    assert YoloDecoder(sig, NAMES, {"labels_skip_na": False}, 0.5).labels.get(1) == "1"
    assert YoloDecoder(sig, NAMES, {"label_offset": 1}, 0.5).labels.get(1) == "car"
    assert YoloDecoder(sig, NAMES, {"version": 8}, 0.5).num_classes == 4


def test_empty_and_large_head_is_fast_enough_to_be_vectorised() -> None:
    rows = np.zeros((25200, 85), np.float32)
    sig = signature(spec((1, 25200, 85), "uint8", SCALE, ZP))
    dec = YoloDecoder(sig, parse_labels([]), {}, 0.5)
    assert dec.decode([quantise(rows)[None]], IDENTITY).detections == ()
    # many candidates over the threshold: NMS still returns at most max_detections
    rng = np.random.default_rng(0)
    rows[:, :2] = rng.uniform(0.05, 0.95, (25200, 2))
    rows[:, 2:4] = 0.02
    rows[:, 4] = 0.9
    rows[np.arange(25200), 5 + rng.integers(0, 80, 25200)] = 0.9
    dec = YoloDecoder(sig, parse_labels([]), {"max_detections": 50}, 0.5)
    t = time.perf_counter()
    inf = dec.decode([quantise(rows)[None]], IDENTITY)
    assert len(inf.detections) == 50
    assert time.perf_counter() - t < 30  # a sanity bound, not a benchmark


@pytest.mark.parametrize("shape", [(1, 1001), (1, 10, 4), (1, 2254, 1), (1, 85, 85)])
def test_refuses_outputs_that_are_not_a_yolo_head(shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError, match="decoder 'yolo' does not fit this model"):
        YoloDecoder(signature(spec(shape)), NAMES, {}, 0.5)


def test_refuses_ssd_and_suggests_it() -> None:
    sig = signature(spec((1, 10, 4)), spec((1, 10)), spec((1, 10)), spec((1,)))
    with pytest.raises(ModelError, match=r"try decoder: ssd"):
        YoloDecoder(sig, NAMES, {}, 0.5)


def test_bad_option_values() -> None:
    sig = signature(spec((1, 1000, 8)))
    with pytest.raises(ValueError, match="iou_threshold: expected a number"):
        YoloDecoder(sig, NAMES, {"iou_threshold": 2}, 0.5)
    with pytest.raises(ValueError, match="version: expected one of"):
        YoloDecoder(sig, NAMES, {"version": 11}, 0.5)
