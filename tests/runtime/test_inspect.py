"""``edge-agent model inspect``: signature, quantisation, ops, size, sha256; bad files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.commands.model import cmd_inspect
from edge_agent.errors import ModelError
from edge_agent.runtime.inspect import describe_model, format_description
from tests.conftest import shared_model

SSD = "coco_ssd_mobilenet_v1_1.0_quant.tflite"
SSD_SHA = "e4b118e5e4531945de2e659742c7c590f7536f8d0ed26d135abcfe83b4779d13"


def test_describe_ssd() -> None:
    info = describe_model(shared_model(SSD))
    assert info["loads"] and info["load_error"] is None
    assert info["size"] == 4183312 and info["sha256"] == SSD_SHA
    (inp,) = info["inputs"]
    assert inp["shape"] == [1, 300, 300, 3] and inp["dtype"] == "uint8"
    assert inp["scale"] == pytest.approx(1 / 128) and inp["zero_point"] == 128
    assert info["input_mapping"] == ["raw pixels"]
    assert len(info["outputs"]) == 4
    assert info["quantization"].startswith("full integer")
    assert info["ops"]["CONV_2D"] == 34
    assert info["custom_ops"] == ["TFLite_Detection_PostProcess"]


@pytest.mark.parametrize(("name", "kind"), [
    ("face_detection_short_range.tflite", "float16 weights"),
    ("tf2_ssd_mobilenet_v2_320_coco_float.tflite", "dynamic range"),
    ("yolov5n-int8.tflite", "full integer"),
])
def test_quantisation_summary(name: str, kind: str) -> None:
    assert describe_model(shared_model(name))["quantization"].startswith(kind)


def test_model_that_does_not_load_is_still_described(capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_model("invalid_model_unresolved_custom_op.tflite")
    info = describe_model(path)
    assert not info["loads"] and "fake-op-double" in info["load_error"]
    assert info["custom_ops"] == ["fake-op-double"]
    assert cmd_inspect(argparse.Namespace(file=str(path), json=False)) == 1
    assert "loads       NO" in capsys.readouterr().out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "inspect", str(shared_model(SSD)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256"] == SSD_SHA and info["ops"]["DEPTHWISE_CONV_2D"] == 13


def test_text_output() -> None:
    text = format_description(describe_model(shared_model("keras_lstm_mnist_ptq.tflite")))
    assert "sha256      ac718e4b27731e370c21bc018ad6214512fd56ce1dfde308a050707eda6f0a4b" in text
    assert "[1x28x28]" in text and "ops " in text


@pytest.mark.parametrize(("content", "match"), [
    (b"", "not a TFLite model"),
    (b"plain text, no model here", "not a TFLite model"),
])
def test_not_a_model(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        describe_model(path)


def test_truncated_model_gives_one_line_and_exit_1(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = shared_model(SSD).read_bytes()
    path = tmp_path / "truncated.tflite"
    path.write_bytes(data[:100_000])
    assert main(["model", "inspect", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-agent: ") and "corrupt or truncated" in err
    assert len(err.splitlines()) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read model"):
        describe_model(tmp_path / "nope.tflite")
