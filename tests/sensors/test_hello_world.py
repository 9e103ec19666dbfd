"""hello_world_int8 (y = sin x) fed by the sensor source: file and generator of x values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import SensorSourceConfig
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import prepare_window
from edge_agent.sources.sensor import SensorSource
from tests.conftest import shared_model


def run_model(src: SensorSource, model: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every window through quantise -> infer -> dequantise: (x values, y values)."""
    rt = load_runtime(model, threads=1)
    spec_in, spec_out = rt.signature.inputs[0], rt.signature.outputs[0]
    xs, ys = [], []
    src.open()
    try:
        while True:
            frame = src.read(1.0)
            assert frame is not None
            out = rt.infer([prepare_window(spec_in, frame.data)])[0]
            xs.append(float(frame.data[0, 0]))
            ys.append(float(spec_out.dequantize(out).reshape(-1)[0]))
    except EOFError:
        pass
    finally:
        src.close()
        rt.close()
    return np.array(xs), np.array(ys)


def test_csv_of_x_values_gives_sin_x(tmp_path: Path) -> None:
    model = shared_model("sensor/hello_world_int8.tflite")
    # the 50 points of MANIFEST.md (max error 0.116 there); the int8 input tops out at 6.24
    xs = np.linspace(0, 2 * np.pi, 50)
    csv = tmp_path / "x.csv"
    csv.write_text("x\n" + "".join(f"{x:.6f}\n" for x in xs) + "not-a-number\n")
    src = SensorSource(SensorSourceConfig(type="sensor", uri=str(csv), window=1))
    got_x, got_y = run_model(src, model)
    assert len(got_x) == 50 and src.bad_lines == 1
    err = np.abs(got_y - np.sin(got_x))
    assert err.max() < 0.12, err.max()


def test_synthetic_ramp_gives_sin_x() -> None:
    model = shared_model("sensor/hello_world_int8.tflite")
    src = SensorSource(SensorSourceConfig(
        type="sensor", uri="synthetic:ramp?start=0&stop=6.2&step=0.1&samples=63", window=1))
    got_x, got_y = run_model(src, model)
    assert len(got_x) == 63
    assert np.abs(got_y - np.sin(got_x)).max() < 0.12


def test_wrong_window_size_is_a_clear_model_error() -> None:
    model = shared_model("sensor/hello_world_int8.tflite")
    rt = load_runtime(model, threads=1)
    try:
        with pytest.raises(Exception, match="window and channels"):
            prepare_window(rt.signature.inputs[0], np.zeros((4, 1), np.float32))
    finally:
        rt.close()
