"""RawDecoder: values, class histograms of integer maps, pooled float maps."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.decoders.labels import NO_LABELS, parse_labels
from edge_agent.decoders.raw import RawDecoder
from edge_agent.errors import ModelError
from edge_agent.types import IDENTITY
from tests.decoders.signatures import signature, spec


def test_dequantised_first_output_flattened() -> None:
    # hello_world_int8 style: [1,1] int8, scale 0.008291, zero point 5
    sig = signature(spec((1, 1), "int8", 0.008291, 5), spec((1, 3)))
    inf = RawDecoder(sig, NO_LABELS, {}, 0.5).decode(
        [np.array([[105]], np.int8), np.zeros((1, 3), np.float32)], IDENTITY)
    assert inf.values == (pytest.approx(100 * 0.008291),)
    assert inf.detections == () and inf.classes is None


def test_int64_class_map_becomes_a_histogram() -> None:
    sig = signature(spec((1, 4, 4), "int64"))
    labels = parse_labels(["background", "cat", "person"])
    m = np.zeros((1, 4, 4), np.int64)
    m[0, :2, :] = 2
    m[0, 3, 3] = 1
    inf = RawDecoder(sig, labels, {}, 0.5).decode([m], IDENTITY)
    assert inf.values == pytest.approx((7 / 16, 1 / 16, 8 / 16))
    assert inf.classes is not None
    assert [(c.label, c.score) for c in inf.classes] == [
        ("person", 0.5), ("background", 7 / 16), ("cat", 1 / 16)]


def test_large_float_map_is_pooled_to_max_values() -> None:
    sig = signature(spec((1, 64, 64, 1)))
    x = np.zeros((1, 64, 64, 1), np.float32)
    x[0, :32, :32] = 1.0
    inf = RawDecoder(sig, NO_LABELS, {"max_values": 256}, 0.5).decode([x], IDENTITY)
    assert inf.values is not None and len(inf.values) == 256
    grid = np.asarray(inf.values).reshape(16, 16)
    assert grid[:8, :8].min() == 1.0 and grid[8:, :].max() == 0.0


def test_large_vector_is_refused() -> None:
    with pytest.raises(ModelError, match="at most max_values=1024"):
        RawDecoder(signature(spec((1, 5000))), NO_LABELS, {}, 0.5)


def test_no_outputs_is_refused() -> None:
    with pytest.raises(ModelError, match="decoder 'raw' does not fit"):
        RawDecoder(signature(), NO_LABELS, {}, 0.5)


def test_uint8_class_map_without_quantisation_is_a_histogram() -> None:
    sig = signature(spec((1, 8, 8), "uint8"))
    m = np.full((1, 8, 8), 3, np.uint8)
    inf = RawDecoder(sig, NO_LABELS, {}, 0.5).decode([m], IDENTITY)
    assert inf.classes is not None and [(c.label, c.score) for c in inf.classes] == [("3", 1.0)]
