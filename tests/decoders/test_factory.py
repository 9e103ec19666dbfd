"""create_decoder: 'auto' picks from the output signature, or says what to set."""

from __future__ import annotations

import pytest

from edge_agent.decoders.base import Decoder
from edge_agent.decoders.factory import create_decoder, guess_decoder
from edge_agent.decoders.labels import NO_LABELS
from edge_agent.errors import ConfigError, ModelError, PluginUnavailableError
from edge_agent.runtime.base import TensorSpec
from edge_agent.runtime.interpreter import load_runtime
from tests.conftest import shared_model
from tests.decoders.signatures import signature, spec

SSD = (spec((1, 10, 4)), spec((1, 10)), spec((1, 10)), spec((1,)))


@pytest.mark.parametrize(("outputs", "kind"), [
    (SSD, "ssd"),
    ((spec((1,)), spec((1, 10)), spec((1, 10, 4)), spec((1, 10))), "ssd"),
    ((spec((1, 25200, 85), "uint8", 0.0045, 3),), "yolo"),
    ((spec((1, 84, 8400)),), "yolo"),
    ((spec((1, 896, 16)), spec((1, 896, 1))), "anchors"),
    ((spec((1, 2254, 1)), spec((1, 2254, 12))), "anchors"),
    ((spec((1, 1001), "uint8", 1 / 256),), "classification"),
    ((spec((1, 2), "int8", 1 / 256, -128),), "classification"),
    ((spec((1, 1)),), None),
    ((spec((1, 513, 513), "int64"),), None),
    ((spec((1, 256, 256, 1)),), None),
    ((spec((1, 1, 17, 3)),), None),
])
def test_guess(outputs: tuple[TensorSpec, ...], kind: str | None) -> None:
    assert guess_decoder(signature(*outputs)) == kind


def test_auto_builds_a_decoder_that_follows_the_protocol() -> None:
    dec = create_decoder("auto", signature(*SSD), NO_LABELS, {}, 0.5)
    assert isinstance(dec, Decoder)
    assert dec.kind == "ssd" and dec.letterbox is False


def test_auto_names_the_decoder_to_set_when_it_cannot_tell() -> None:
    with pytest.raises(ModelError, match=r"decoder 'auto' cannot tell.*\[1,1,17,3\] float32.*"
                                         r"set model.decoder to one of: .*raw"):
        create_decoder("auto", signature(spec((1, 1, 17, 3))), NO_LABELS, {}, 0.5)


def test_explicit_decoder_that_does_not_fit() -> None:
    with pytest.raises(ModelError, match=r"decoder 'ssd' does not fit this model: expected 4 "
                                         r"outputs boxes \[1,N,4\].*try decoder: anchors"):
        create_decoder("ssd", signature(spec((1, 896, 16)), spec((1, 896, 1))), NO_LABELS,
                       {}, 0.5)


def test_unknown_decoder_and_bad_options() -> None:
    with pytest.raises(PluginUnavailableError, match="unknown decoders kind 'nope'"):
        create_decoder("nope", signature(*SSD), NO_LABELS, {}, 0.5)
    with pytest.raises(ConfigError, match="top_k: unknown option for decoder 'ssd'"):
        create_decoder("auto", signature(*SSD), NO_LABELS, {"top_k": 3}, 0.5)


@pytest.mark.parametrize(("model", "kind"), [
    ("coco_ssd_mobilenet_v1_1.0_quant.tflite", "ssd"),
    ("tf2_ssd_mobilenet_v2_320_coco_float.tflite", "ssd"),
    ("yolov5n-int8.tflite", "yolo"),
    ("face_detection_short_range.tflite", "anchors"),
    ("face_detection_full_range_sparse.tflite", "anchors"),
    ("pose_detection.tflite", "anchors"),
    ("mobilenet_v2_1.0_224_quant.tflite", "classification"),
    ("keras_lstm_mnist_ptq.tflite", "classification"),
    ("person_detect_tflm_qdimfix.tflite", "classification"),
    ("deeplabv3_mnv2_dm05_pascal_quant.tflite", None),
    ("movenet_single_pose_lightning_ptq.tflite", None),
    ("sensor/hello_world_int8.tflite", None),
])
def test_auto_on_the_real_models(model: str, kind: str | None) -> None:
    runtime = load_runtime(shared_model(model), threads=1)
    try:
        sig = runtime.signature
    finally:
        runtime.close()
    assert guess_decoder(sig) == kind
    if kind is None:
        # raw always fits, so the user has a decoder to set
        assert create_decoder("raw", sig, NO_LABELS, {}, 0.5).kind == "raw"


def test_every_explicit_decoder_refuses_the_classifier() -> None:
    sig = signature(spec((1, 1001), "uint8", 1 / 256))
    for kind in ("ssd", "yolo", "anchors"):
        with pytest.raises(ModelError, match=rf"decoder '{kind}' does not fit.*"
                                             r"try decoder: classification"):
            create_decoder(kind, sig, NO_LABELS, {}, 0.5)
