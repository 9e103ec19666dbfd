"""Decoder option defaults come from the config's options classes (written once), and every
option a decoder reads is one the config declares for it."""

from __future__ import annotations

import re

import pytest

from edge_agent.config import DECODER_OPTIONS, AutoOptions, ClassificationOptions, YoloOptions
from edge_agent.decoders.base import DecoderOptionsError, typed_options
from edge_agent.decoders.classification import ClassificationDecoder
from edge_agent.decoders.labels import NO_LABELS
from edge_agent.decoders.raw import RawDecoder
from edge_agent.decoders.yolo import YoloDecoder
from tests.decoders.signatures import signature, spec

YOLO = signature(spec((1, 7, 100)), input_shape=(1, 640, 640, 3))
CLS = signature(spec((1, 4)))
RAW = signature(spec((1, 3)))


def _default(kind: str, key: str) -> object:
    return DECODER_OPTIONS[kind].model_fields[key].default


def test_unset_options_take_the_config_models_defaults() -> None:
    yolo = YoloDecoder(YOLO, NO_LABELS, {}, 0.5)
    assert yolo.iou_threshold == _default("yolo", "iou_threshold")
    assert yolo.max_detections == _default("yolo", "max_detections")
    assert yolo.max_candidates == _default("yolo", "max_candidates")
    assert ClassificationDecoder(CLS, NO_LABELS, {}, 0.0).top_k == _default(
        "classification", "top_k")
    assert RawDecoder(RAW, NO_LABELS, {}, 0.5).max_values == _default("raw", "max_values")


@pytest.mark.parametrize(("kind", "make"), [
    ("yolo", lambda o: YoloDecoder(YOLO, NO_LABELS, o, 0.5)),
    ("classification", lambda o: ClassificationDecoder(CLS, NO_LABELS, o, 0.0)),
    ("raw", lambda o: RawDecoder(RAW, NO_LABELS, o, 0.5)),
])
def test_every_option_a_decoder_reads_is_declared_in_the_config(kind, make) -> None:
    with pytest.raises(DecoderOptionsError) as info:
        make({"no_such_option": 1})
    known = re.search(r"expected one of: ([^)]*)\)", str(info.value))
    assert known is not None
    read = set(known.group(1).split(", "))
    assert read <= set(DECODER_OPTIONS[kind].model_fields) - {"decoder"}, read


@pytest.mark.parametrize("kind", sorted(DECODER_OPTIONS))
def test_every_option_is_declared_once_with_its_description(kind: str) -> None:
    fields = {k: f for k, f in DECODER_OPTIONS[kind].model_fields.items() if k != "decoder"}
    assert fields
    assert all(f.description for f in fields.values()), kind


def test_the_config_object_reaches_the_decoder_as_it_is_and_auto_is_validated_there() -> None:
    typed = YoloOptions(decoder="yolo", max_detections=7)
    assert typed_options(YoloOptions, typed) is typed
    assert YoloDecoder(YOLO, NO_LABELS, typed, 0.5).max_detections == 7
    # under decoder: auto the keys are checked once the decoder is known: by the same class
    auto = AutoOptions(decoder="auto", top_k=3)
    with pytest.raises(DecoderOptionsError, match=r"top_k: unknown option for decoder 'yolo'"):
        typed_options(YoloOptions, auto)
    assert typed_options(ClassificationOptions, auto).top_k == 3
    with pytest.raises(DecoderOptionsError,
                       match=r"max_detections: expected an integer >= 1 \(decoder 'yolo'\), "
                             r"got 0"):
        typed_options(YoloOptions, {"max_detections": 0})
