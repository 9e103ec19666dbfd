"""``model quantize``: float16 widening, calibration, and the int8 model it writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.cli import main
from edge_agent.errors import ModelError
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import prepare_window
from edge_agent.runtime.quantize import quantize_model, widen_float16
from tests.conftest import shared_model


def test_widen_float16_keeps_outputs(tmp_path: Path) -> None:
    src = shared_model("face_detection_short_range.tflite")
    data, removed = widen_float16(src.read_bytes())
    assert removed == 74  # one DEQUANTIZE per float16 weight tensor
    wide = tmp_path / "wide.tflite"
    wide.write_bytes(data)
    a, b = load_runtime(src), load_runtime(wide)
    assert "DEQUANTIZE" not in b.ops()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    for out_a, out_b in zip(a.infer([x]), b.infer([x]), strict=True):
        assert np.abs(out_a - out_b).max() < 1e-3
    assert widen_float16(shared_model("sensor/hello_world_float.tflite").read_bytes())[1] == 0


def test_quantize_sensor_model(tmp_path: Path) -> None:
    calibration = tmp_path / "windows"
    calibration.mkdir()
    for i, x in enumerate(np.linspace(0, 2 * np.pi, 64)):
        np.save(calibration / f"{i:03}.npy", np.array([[x]], np.float32))
    out = tmp_path / "hello_int8.tflite"
    report = quantize_model(shared_model("sensor/hello_world_float.tflite"), calibration, out,
                            input_type="int8", output_type="int8")
    assert report["calibration_samples"] == 64
    rt = load_runtime(out)
    (inp,), (outp,) = rt.signature.inputs, rt.signature.outputs
    assert inp.dtype == "int8" and inp.quantized and outp.dtype == "int8"
    errors = []
    for x in np.linspace(0.1, 6.2, 40):
        (y,) = rt.infer([prepare_window(inp, np.array([[x]], np.float32))])
        errors.append(abs(float(outp.dequantize(y)[0, 0]) - np.sin(x)))
    assert np.mean(errors) < 0.06  # the upstream int8 model: 0.026


def test_quantize_blazeface_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "face_int8.tflite"
    images = shared_model("images")
    rc = main(["model", "quantize", str(shared_model("face_detection_short_range.tflite")),
               "--calibration", str(images), "--out", str(out), "--letterbox"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "invoke median" in text and "relative RMSE" in text
    rt = load_runtime(out)
    assert rt.signature.inputs[0].dtype == "uint8"
    assert [o.dtype for o in rt.signature.outputs] == ["float32", "float32"]


def test_refuses_quantised_model_and_empty_calibration(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="already takes uint8"):
        quantize_model(shared_model("mobilenet_v1_0.25_128_quant.tflite"), tmp_path,
                       tmp_path / "x.tflite")
    with pytest.raises(ModelError, match="no calibration images"):
        quantize_model(shared_model("face_detection_short_range.tflite"), tmp_path,
                       tmp_path / "x.tflite")
    assert main(["model", "quantize", str(shared_model("face_detection_short_range.tflite")),
                 "--calibration", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1


@pytest.mark.parametrize(("name", "match"), [
    ("tf2_ssd_mobilenet_v2_320_coco_float.tflite", "already has quantised"),
    ("face_detection_full_range_sparse.tflite", "sparse weights"),
])
def test_unsupported_models_give_one_line(tmp_path: Path, name: str, match: str) -> None:
    with pytest.raises(ModelError, match=match) as err:
        quantize_model(shared_model(name), shared_model("images"), tmp_path / "x.tflite",
                       limit=1)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.tflite").exists()
