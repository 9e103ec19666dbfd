"""SsdDecoder on synthetic TFLite_Detection_PostProcess outputs in any order."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.decoders.labels import parse_labels
from edge_agent.decoders.ssd import SsdDecoder
from edge_agent.errors import ModelError
from edge_agent.types import IDENTITY, Transform
from tests.decoders.signatures import signature, spec

LABELS = parse_labels(["person", "bicycle", "car", "n/a", "dog"])
BOXES = np.array([[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.3, 0.4, 0.4]]],
                 dtype=np.float32)  # ymin, xmin, ymax, xmax
CLASSES = np.array([[2.0, 0.0, 4.0]], dtype=np.float32)
SCORES = np.array([[0.9, 0.6, 0.3]], dtype=np.float32)
COUNT = np.array([3.0], dtype=np.float32)


def tensors() -> list[tuple[str, np.ndarray]]:
    return [("boxes", BOXES), ("classes", CLASSES), ("scores", SCORES), ("count", COUNT)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_any_output_order_decodes_the_same(order: tuple[int, ...]) -> None:
    items = [tensors()[i] for i in order]
    sig = signature(*(spec(a.shape, name=f"StatefulPartitionedCall:{k}", index=k)
                      for k, (_, a) in enumerate(items)))
    dec = SsdDecoder(sig, LABELS, {}, 0.5)
    inf = dec.decode([a for _, a in items], IDENTITY)
    assert [(d.label, round(d.score, 3)) for d in inf.detections] == [("car", 0.9),
                                                                       ("person", 0.6)]
    np.testing.assert_allclose(inf.detections[0].box, (0.2, 0.1, 0.6, 0.5), atol=1e-6)


def test_classes_all_zero_are_still_told_from_scores() -> None:
    # every detection is class 0 (person): classes are integers, scores are fractions
    classes = np.zeros((1, 3), np.float32)
    items = [BOXES, SCORES, classes, COUNT]  # scores before classes
    sig = signature(*(spec(a.shape) for a in items))
    inf = SsdDecoder(sig, LABELS, {}, 0.5).decode(items, IDENTITY)
    assert [d.label for d in inf.detections] == ["person", "person"]
    assert [round(d.score, 2) for d in inf.detections] == [0.9, 0.6]


def test_count_limits_detections_and_transform_maps_boxes() -> None:
    items = [BOXES, CLASSES, SCORES, np.array([1.0], np.float32)]
    sig = signature(*(spec(a.shape) for a in items))
    tr = Transform(scale_x=0.5, scale_y=1.0, pad_x=0.25, pad_y=0.0)
    inf = SsdDecoder(sig, LABELS, {}, 0.1).decode(items, tr)
    assert len(inf.detections) == 1
    np.testing.assert_allclose(inf.detections[0].box, (0.0, 0.1, 0.7, 0.5), atol=1e-6)


def test_placeholder_label_file_is_shifted_and_offset_option_wins() -> None:
    items = [BOXES, CLASSES, SCORES, COUNT]
    sig = signature(*(spec(a.shape) for a in items))
    placeholder = parse_labels(["???", "person", "bicycle", "car"])
    assert SsdDecoder(sig, placeholder, {}, 0.5).decode(items, IDENTITY).detections[0].label \
        == "car"
    shifted = SsdDecoder(sig, LABELS, {"label_offset": 1}, 0.5).decode(items, IDENTITY)
    # class 2 -> entry 3, an n/a gap: the name falls back to the class id
    assert [d.label for d in shifted.detections] == ["2", "bicycle"]


def test_refuses_a_classifier_and_names_the_decoder_to_try() -> None:
    sig = signature(spec((1, 1001), "uint8", 1 / 256))
    with pytest.raises(ModelError, match=r"decoder 'ssd' does not fit this model: expected 4 "
                                         r"outputs.*got 1 output\(s\) \[1,1001\] uint8 "
                                         r"\(try decoder: classification\)"):
        SsdDecoder(sig, LABELS, {}, 0.5)


def test_refuses_four_outputs_without_boxes() -> None:
    sig = signature(*(spec((1, 10)) for _ in range(3)), spec((1,)))
    with pytest.raises(ModelError, match="does not fit"):
        SsdDecoder(sig, LABELS, {}, 0.5)


def test_unknown_option_is_a_config_error() -> None:
    from edge_agent.errors import ConfigError

    sig = signature(*(spec(a.shape) for a in [BOXES, CLASSES, SCORES, COUNT]))
    with pytest.raises(ConfigError, match="iou_treshold: unknown option for decoder 'ssd'"):
        SsdDecoder(sig, LABELS, {"iou_treshold": 0.3}, 0.5)
    with pytest.raises(ValueError, match="max_detections: expected an integer"):
        SsdDecoder(sig, LABELS, {"max_detections": "many"}, 0.5)


def test_one_based_id_label_map_is_aligned() -> None:
    # TF object-detection label maps number classes from 1; the postprocess op from 0
    items = [BOXES, CLASSES, SCORES, COUNT]
    sig = signature(*(spec(a.shape) for a in items))
    labels = parse_labels(["1 person", "2 bicycle", "3 car"])
    inf = SsdDecoder(sig, labels, {}, 0.5).decode(items, IDENTITY)
    assert [d.label for d in inf.detections] == ["car", "person"]
