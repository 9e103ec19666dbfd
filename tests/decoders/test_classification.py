"""ClassificationDecoder: top-k, background class, dequantisation, logits."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.decoders.classification import ClassificationDecoder
from edge_agent.decoders.labels import NO_LABELS, parse_labels
from edge_agent.errors import ModelError
from edge_agent.types import IDENTITY
from tests.decoders.signatures import signature, spec


def test_quantised_probabilities_top_k_best_first() -> None:
    sig = signature(spec((1, 4), "uint8", 1 / 256, 0))
    labels = parse_labels(["a", "b", "c", "d"])
    dec = ClassificationDecoder(sig, labels, {"top_k": 2}, 0.0)
    q = np.array([[10, 200, 40, 6]], np.uint8)
    inf = dec.decode([q], IDENTITY)
    assert inf.classes is not None
    assert [(c.label, c.class_id) for c in inf.classes] == [("b", 1), ("c", 2)]
    assert inf.classes[0].score == pytest.approx(200 / 256)


def test_int8_zero_point_and_threshold() -> None:
    # person_detect style: int8, scale 1/256, zero point -128
    sig = signature(spec((1, 2), "int8", 1 / 256, -128))
    dec = ClassificationDecoder(sig, parse_labels(["notperson", "person"]), {}, 0.5)
    inf = dec.decode([np.array([[-113, 113]], np.int8)], IDENTITY)
    assert inf.classes is not None and [c.label for c in inf.classes] == ["person"]
    assert inf.classes[0].score == pytest.approx((113 + 128) / 256)


def test_background_auto_for_1001_classes() -> None:
    sig = signature(spec((1, 1001), "uint8", 1 / 256))
    dec = ClassificationDecoder(sig, NO_LABELS, {}, 0.0)
    assert dec.background
    q = np.zeros((1, 1001), np.uint8)
    q[0, 0], q[0, 5] = 250, 5
    inf = dec.decode([q], IDENTITY)
    assert inf.classes is not None and inf.classes[0].class_id == 5
    assert not ClassificationDecoder(sig, NO_LABELS, {"background": False}, 0.0).background


def test_label_file_with_extra_background_line_is_shifted() -> None:
    sig = signature(spec((1, 3)))
    dec = ClassificationDecoder(sig, parse_labels(["background", "x", "y", "z"]), {}, 0.0)
    assert not dec.background
    inf = dec.decode([np.array([[0.1, 0.2, 0.7]], np.float32)], IDENTITY)
    assert inf.classes is not None and inf.classes[0].label == "z"


def test_logits_get_softmax_only_when_they_look_like_logits() -> None:
    sig = signature(spec((1, 3)))
    dec = ClassificationDecoder(sig, NO_LABELS, {}, 0.0)
    inf = dec.decode([np.array([[2.0, -1.0, 0.5]], np.float32)], IDENTITY)
    assert inf.classes is not None
    assert sum(c.score for c in inf.classes) == pytest.approx(1.0)
    assert inf.classes[0].label == "0"
    probs = dec.decode([np.array([[0.2, 0.5, 0.3]], np.float32)], IDENTITY)
    assert probs.classes is not None and probs.classes[0].score == pytest.approx(0.5)
    forced = ClassificationDecoder(sig, NO_LABELS, {"softmax": True}, 0.0)
    out = forced.decode([np.array([[0.2, 0.5, 0.3]], np.float32)], IDENTITY)
    assert out.classes is not None and out.classes[0].score < 0.5


@pytest.mark.parametrize("outputs", [[(1, 1)], [(1, 10, 4)], [(1, 5), (1, 5)]])
def test_refuses_non_vectors(outputs: list[tuple[int, ...]]) -> None:
    with pytest.raises(ModelError, match="decoder 'classification' does not fit"):
        ClassificationDecoder(signature(*(spec(s) for s in outputs)), NO_LABELS, {}, 0.5)


def test_bad_options() -> None:
    sig = signature(spec((1, 3)))
    with pytest.raises(ValueError, match="top_k: expected an integer >= 1"):
        ClassificationDecoder(sig, NO_LABELS, {"top_k": 0}, 0.5)
    with pytest.raises(ValueError, match="background: expected one of auto, True, False"):
        ClassificationDecoder(sig, NO_LABELS, {"background": "yes"}, 0.5)
