"""A small int8 FULLY_CONNECTED time-series model built here with the TFLite schema, whose
outputs are computed by hand: it proves windowing (window, hop, channels, sample order) and
quantisation by the tensor's own scale and zero point, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import SensorSourceConfig
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import prepare_window
from edge_agent.sources.sensor import SensorSource

S = pytest.importorskip("ai_edge_litert.schema_py_generated")
flatbuffers = pytest.importorskip("flatbuffers")

WINDOW, CHANNELS = 4, 2
IN_SCALE, IN_ZP = 0.5, -3
OUT_SCALE, OUT_ZP = 0.5, 4  # in_scale * w_scale / out_scale = 1: requantisation is exact
# (3, 8) int8 weights over the window flattened sample by sample, channels inside:
# out0 = sum of channel 0, out1 = sum of channel 1, out2 = last ch0 - first ch0
WEIGHTS = np.array([
    [1, 0, 1, 0, 1, 0, 1, 0],
    [0, 1, 0, 1, 0, 1, 0, 1],
    [-1, 0, 0, 0, 0, 0, 1, 0],
], dtype=np.int8)


def _tensor(name: str, shape: list[int], ttype: int, buffer: int, scale: float,
            zp: int) -> object:
    t = S.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), shape, ttype, buffer
    q = S.QuantizationParametersT()
    q.scale, q.zeroPoint = [scale], [zp]
    t.quantization = q
    return t


def build_fc_model(path: Path, input_shape: list[int]) -> Path:
    """Write an int8 FULLY_CONNECTED model: input ``input_shape`` (8 values) -> [1, 3]."""
    bufs = [S.BufferT() for _ in range(5)]
    bufs[2].data = list(WEIGHTS.tobytes())
    bufs[3].data = list(np.zeros(3, np.int32).tobytes())
    tensors = [
        _tensor("window", input_shape, S.TensorType.INT8, 1, IN_SCALE, IN_ZP),
        _tensor("weights", [3, WINDOW * CHANNELS], S.TensorType.INT8, 2, 1.0, 0),
        _tensor("bias", [3], S.TensorType.INT32, 3, IN_SCALE * 1.0, 0),
        _tensor("out", [1, 3], S.TensorType.INT8, 4, OUT_SCALE, OUT_ZP),
    ]
    op = S.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = S.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = S.FullyConnectedOptionsT()
    sg = S.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [3], [op]
    code = S.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = S.BuiltinOperator.FULLY_CONNECTED
    code.version = 4
    model = S.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sg], bufs
    model.description = b"edge-agent test: windowing"
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return path


def expected(window: np.ndarray) -> np.ndarray:
    """The model's output for a (4, 2) window, by hand (real values, then int8)."""
    q = np.clip(np.rint(window / IN_SCALE) + IN_ZP, -128, 127)
    x = (q - IN_ZP).reshape(-1)  # sample-major, channels inside
    acc = WEIGHTS.astype(np.int64) @ x.astype(np.int64)  # bias 0, multiplier exactly 1
    return np.clip(acc + OUT_ZP, -128, 127).astype(np.int8)


@pytest.mark.parametrize("input_shape", [[1, 8], [1, 4, 2]], ids=["1xN", "1xNxC"])
def test_windowing_and_quantisation_exact(tmp_path: Path, input_shape: list[int]) -> None:
    model = build_fc_model(tmp_path / "fc.tflite", input_shape)
    # 7 samples, 2 channels: window 4, hop 2 -> windows starting at samples 0 and 2
    samples = np.array([[1.5, -2], [0.5, 3], [-1, 4.5], [2, 0], [3.5, -0.5], [-4, 1],
                        [6, 6]], dtype=np.float32)
    csv = tmp_path / "w.csv"
    csv.write_text("ch0,ch1\n" + "".join(f"{a},{b}\n" for a, b in samples) + "bad,line\n")
    src = SensorSource(SensorSourceConfig(type="sensor", uri=str(csv), window=WINDOW, hop=2,
                                          channels=CHANNELS))
    rt = load_runtime(model, threads=1)
    spec = rt.signature.inputs[0]
    assert spec.dtype == "int8" and spec.scale == IN_SCALE and spec.zero_point == IN_ZP
    outs = []
    src.open()
    try:
        while True:
            frame = src.read(1.0)
            assert frame is not None
            x = prepare_window(spec, frame.data)
            assert x.shape == tuple(input_shape) and x.dtype == np.int8
            outs.append((frame.data.copy(), rt.infer([x])[0]))
    except EOFError:
        pass
    finally:
        src.close()
        rt.close()
    assert len(outs) == 2 and src.bad_lines == 1
    for k, (data, out) in enumerate(outs):
        np.testing.assert_array_equal(data, samples[2 * k: 2 * k + 4])
        np.testing.assert_array_equal(out.reshape(-1), expected(data))
    # real values: out0 = sum ch0, out1 = sum ch1, out2 = last ch0 - first ch0
    real = (outs[1][1].reshape(-1).astype(np.float32) - OUT_ZP) * OUT_SCALE
    np.testing.assert_array_equal(real, [-1 + 2 + 3.5 - 4, 4.5 + 0 - 0.5 + 1, -4 - (-1)])
