"""ThresholdDecoder: crossings with hysteresis, both directions, options, misfits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.decoders.factory import create_decoder
from edge_agent.decoders.labels import Labels, load_labels
from edge_agent.decoders.threshold import ThresholdDecoder
from edge_agent.errors import ConfigError, ModelError
from edge_agent.runtime.base import ModelSignature, TensorSpec
from edge_agent.types import IDENTITY

INT8_OUT = TensorSpec("out", 0, (1, 4), "int8", 1 / 256, -128)
SIG = ModelSignature(inputs=(TensorSpec("in", 1, (1, 1), "float32"),), outputs=(INT8_OUT,))
FLOAT_SIG = ModelSignature(inputs=SIG.inputs, outputs=(TensorSpec("y", 0, (1, 1), "float32"),))


def q(*scores: float) -> list[np.ndarray]:
    """int8 outputs holding ``scores`` (scale 1/256, zero point -128)."""
    return [np.array([[round(s * 256) - 128 for s in scores]], np.int8)]


def f(value: float) -> list[np.ndarray]:
    return [np.array([[value]], np.float32)]


def run(dec: ThresholdDecoder, values: list[float]) -> list[str | None]:
    out: list[str | None] = []
    for v in values:
        inf = dec.decode(f(v), IDENTITY)
        assert inf.values == (pytest.approx(v),)
        out.append(inf.classes[0].label if inf.classes else None)
    return out


def test_above_with_hysteresis_emits_on_crossings_only() -> None:
    dec = ThresholdDecoder(FLOAT_SIG, Labels(), {"level": 1.0, "hysteresis": 0.5}, 0.5)
    seq = [0.2, 1.0, 1.2, 0.8, 0.6, 0.49, 0.3, 1.5, -3.0]
    assert run(dec, seq) == [None, "value", None, None, None, "value_clear", None, "value",
                             "value_clear"]
    assert dec.crossings == 4 and dec.active is False


def test_below_direction_and_custom_labels() -> None:
    opts = {"level": 0.0, "hysteresis": 0.25, "direction": "below",
            "on_label": "freezing", "off_label": "thawed"}
    dec = ThresholdDecoder(FLOAT_SIG, Labels(), opts, 0.5)
    assert run(dec, [1.0, 0.0, 0.125, 0.25, 0.375, -1]) == [None, "freezing", None, None,
                                                         "thawed", "freezing"]


def test_emit_state_on_every_result() -> None:
    dec = ThresholdDecoder(FLOAT_SIG, Labels(), {"level": 1.0, "emit": "state"}, 0.5)
    assert run(dec, [0.0, 2.0, 2.0, 0.0]) == ["value_clear", "value", "value", "value_clear"]


def test_quantised_scores_index_by_label_and_default_level(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("silence\nunknown\nyes\nno\n")
    labels = load_labels(path)
    dec = create_decoder("threshold", SIG, labels, {"index": "yes", "hysteresis": 0.1}, 0.7)
    assert isinstance(dec, ThresholdDecoder) and dec.index == 2 and dec.level == 0.7
    inf = dec.decode(q(0.1, 0.1, 0.75, 0.05), IDENTITY)
    assert inf.classes is not None and inf.classes[0].label == "yes"
    assert inf.classes[0].class_id == 2 and inf.classes[0].score == 1.0
    assert inf.values == pytest.approx((0.1, 0.1, 0.75, 0.05), abs=1 / 256)
    assert dec.decode(q(0, 0, 0.65, 0), IDENTITY).classes is None  # within hysteresis
    assert dec.decode(q(0, 0, 0.55, 0), IDENTITY).classes[0].label == "yes_clear"


def test_bad_options_and_misfits() -> None:
    with pytest.raises(ModelError, match="does not fit"):
        ThresholdDecoder(SIG, Labels(), {"index": 4}, 0.5)
    with pytest.raises(ModelError, match="does not fit"):
        ThresholdDecoder(SIG, Labels(), {"output": 1}, 0.5)
    with pytest.raises(ConfigError, match="direction"):
        ThresholdDecoder(SIG, Labels(), {"direction": "sideways"}, 0.5)
    with pytest.raises(ConfigError, match="levle: unknown option"):
        ThresholdDecoder(SIG, Labels(), {"levle": 0.3}, 0.5)
    with pytest.raises(ConfigError, match="index: no label 'maybe'"):
        ThresholdDecoder(SIG, Labels(("a", "b")), {"index": "maybe"}, 0.5)
    with pytest.raises(ConfigError, match="hysteresis"):
        ThresholdDecoder(SIG, Labels(), {"hysteresis": -1}, 0.5)


def test_state_is_per_instance() -> None:
    a = ThresholdDecoder(FLOAT_SIG, Labels(), {"level": 1.0}, 0.5)
    b = ThresholdDecoder(FLOAT_SIG, Labels(), {"level": 1.0}, 0.5)
    assert run(a, [2.0]) == ["value"]
    assert run(b, [2.0]) == ["value"]
    assert a.active and b.active
