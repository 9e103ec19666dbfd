"""``edge-agent model quantize FLOAT.tflite --calibration DIR --out INT8.tflite``.

Full-integer post-training quantisation with representative frames, through LiteRT's own
calibration wrapper (the one ``tf.lite.TFLiteConverter`` uses): the float model runs on the
calibration inputs to record each tensor's range, then weights and activations become int8.

* float16-weight models (MediaPipe's) have their weights widened to float32 and their
  DEQUANTIZE ops dropped first: the calibrator crashes (SIGSEGV) on them otherwise.
* The calibrator runs in a child process, so a crash in native code is an error message,
  not a dead CLI.
* Calibration images go through the same :class:`Preprocessor` the pipeline uses; sensor
  models take ``.npy`` windows.
* Afterwards both models run on the calibration inputs and the report shows the speed and
  accuracy change (per output: relative RMSE, and top-1 agreement for score vectors).
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.errors import ModelError
from edge_agent.runtime.interpreter import calibration_wrapper, load_runtime, schema_module
from edge_agent.runtime.preprocess import Preprocessor, prepare_window

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_TYPES = {"uint8": np.uint8, "int8": np.int8, "float32": np.float32}


def widen_float16(data: bytes) -> tuple[bytes, int]:
    """The model with float16 constant weights widened to float32 and their DEQUANTIZE ops
    removed; returns ``(model bytes, number of ops removed)`` (unchanged when none)."""
    schema = schema_module()
    if schema is None:
        return data, 0
    import flatbuffers  # a dependency of ai-edge-litert, like the schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    dequantize = schema.BuiltinOperator.DEQUANTIZE
    removed = 0
    for sg in model.subgraphs or []:
        keep = []
        for op in sg.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            src = sg.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) else None
            buf = model.buffers[src.buffer] if src is not None else None
            if (max(code.builtinCode, code.deprecatedBuiltinCode) == dequantize
                    and src is not None and src.type == schema.TensorType.FLOAT16
                    and buf is not None and buf.data is not None and len(buf.data)):
                weights = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float16)
                widened = schema.BufferT()
                widened.data = np.frombuffer(weights.astype(np.float32).tobytes(), np.uint8)
                model.buffers.append(widened)
                sg.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                buf.data = None
                removed += 1
                continue
            keep.append(op)
        sg.operators = keep
    if not removed:
        return data, 0
    # drop operator codes nothing uses any more (the calibrator cannot resolve DEQUANTIZE v2)
    used = sorted({op.opcodeIndex for sg in model.subgraphs for op in sg.operators})
    remap = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for sg in model.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = remap[op.opcodeIndex]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), removed


def calibration_inputs(spec: Any, folder: Path, *, letterbox: bool, input_range: str,
                       limit: int) -> list[np.ndarray]:
    """Model inputs made from the images (or ``.npy`` windows) in ``folder``, sorted."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    inputs: list[np.ndarray] = []
    try:
        pre = Preprocessor(spec, letterbox=letterbox, input_range=input_range, buffers=1)
    except ModelError:
        pre = None
    for path in files:
        if len(inputs) >= limit:
            break
        if pre is not None and path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                logger.warning("skipping unreadable image %s", path.name)
                continue
            inputs.append(pre(image)[0].copy())
        elif pre is None and path.suffix == ".npy":
            inputs.append(prepare_window(spec, np.load(path).astype(np.float32)))
    if not inputs:
        what = "images (.jpg, .png, .bmp)" if pre is not None else ".npy windows"
        raise ModelError(f"no calibration {what} in {folder}")
    return inputs


_HINTS = {
    "Scale and zero points should not be recorded": "the model already has quantised "
    "(dynamic-range) weights: quantise its float original instead",
    "'DENSIFY'": "sparse weights (DENSIFY ops) cannot be quantised after training",
}


def _calibrate(model_path: str, inputs_path: str, out_path: str, input_type: str,
               output_type: str) -> None:
    """Child process: calibrate and quantise; writes ``out_path`` or ``out_path.err``."""
    try:
        # the wrapper does not copy the model: keep the bytes alive as long as it lives
        model = Path(model_path).read_bytes()
        wrapper = calibration_wrapper()(model, [], [])
        arrays = np.load(inputs_path)
        wrapper.Prepare([list(arrays.shape[1:])])
        for arr in arrays:
            wrapper.FeedTensor([np.ascontiguousarray(arr)])
        data = wrapper.QuantizeModel(np.dtype(_TYPES[input_type]).num,
                                     np.dtype(_TYPES[output_type]).num, False,
                                     np.dtype(np.int8).num, np.dtype(np.int32).num, False, False)
        Path(out_path).write_bytes(data)
        del wrapper, model
    except (RuntimeError, ValueError) as exc:
        Path(out_path + ".err").write_text(str(exc))
        raise SystemExit(1) from None


def _failure(err_file: Path, code: int) -> str:
    """A one-line reason from the calibrator child's error text or exit code."""
    text = err_file.read_text(errors="replace") if err_file.is_file() else ""
    for needle, hint in _HINTS.items():
        if needle in text:
            return hint
    lines = list(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip()))
    if lines:
        return "; ".join(lines[:2])
    return f"crashed with signal {-code}" if code < 0 else f"exit code {code}"


def _median_ms(runtime: Any, x: np.ndarray, runs: int = 30) -> float:
    for _ in range(3):
        runtime.infer([x])
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runtime.infer([x])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def compare(float_path: Path, int8_path: Path, float_inputs: list[np.ndarray],
            int8_inputs: list[np.ndarray], threads: int) -> dict[str, Any]:
    """Speed and output agreement of the float and the quantised model on the same inputs."""
    f_rt = load_runtime(float_path, threads=threads)
    q_rt = load_runtime(int8_path, threads=threads)
    outputs = []
    for i, (f_spec, q_spec) in enumerate(zip(f_rt.signature.outputs, q_rt.signature.outputs,
                                             strict=True)):
        errs, agree = [], []
        for fx, qx in zip(float_inputs[:20], int8_inputs[:20], strict=True):
            f = f_spec.dequantize(f_rt.infer([fx])[i]).astype(np.float64)
            q = q_spec.dequantize(q_rt.infer([qx])[i]).astype(np.float64)
            spread = float(f.std()) or 1.0
            errs.append(float(np.sqrt(np.mean((f - q) ** 2))) / spread)
            if f.ndim == 2 and f.shape[1] > 1:
                agree.append(int(f.argmax()) == int(q.argmax()))
        row: dict[str, Any] = {"name": f_spec.name, "shape": list(f_spec.shape),
                               "relative_rmse": float(np.mean(errs))}
        if agree:
            row["top1_agreement"] = float(np.mean(agree))
        outputs.append(row)
    report = {"float_ms": _median_ms(f_rt, float_inputs[0]),
              "int8_ms": _median_ms(q_rt, int8_inputs[0]),
              "float_size": float_path.stat().st_size, "int8_size": int8_path.stat().st_size,
              "outputs": outputs}
    f_rt.close()
    q_rt.close()
    return report


def quantize_model(src: Path, calibration: Path, out: Path, *, letterbox: bool = False,
                   input_range: str = "auto", input_type: str = "uint8",
                   output_type: str = "float32", limit: int = 200,
                   threads: int = 2) -> dict[str, Any]:
    """Quantise ``src`` to full integer and write ``out``; returns the comparison report.

    Raises:
        ModelError: the model is not a float model with one input, no calibration data, or
            the calibrator failed.
    """
    f_rt = load_runtime(src, threads=threads)
    if len(f_rt.signature.inputs) != 1:
        raise ModelError("quantize supports models with one input")
    spec = f_rt.signature.inputs[0]
    if spec.dtype != "float32":
        raise ModelError(f"{src.name} already takes {spec.dtype} input: it is quantised")
    f_rt.close()
    inputs = calibration_inputs(spec, calibration, letterbox=letterbox,
                                input_range=input_range, limit=limit)
    data, widened = widen_float16(src.read_bytes())
    with tempfile.TemporaryDirectory(prefix="edge-agent-quantize-") as tmp:
        model_path = Path(tmp) / "float32.tflite"
        model_path.write_bytes(data)
        inputs_path = Path(tmp) / "inputs.npy"
        np.save(inputs_path, np.stack(inputs))  # (samples, *input shape)
        result = Path(tmp) / "int8.tflite"
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_calibrate, name="edge-agent-calibrate",
                           args=(str(model_path), str(inputs_path), str(result), input_type,
                                 output_type))
        proc.start()
        proc.join()
        code = proc.exitcode or 0
        if code != 0 or not result.is_file():
            reason = _failure(Path(str(result) + ".err"), code)
            raise ModelError(f"cannot quantise {src.name}: {reason}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        tmp_out.write_bytes(result.read_bytes())
        tmp_out.replace(out)
    q_spec = load_runtime(out, threads=threads).signature.inputs[0]
    q_inputs = calibration_inputs(q_spec, calibration, letterbox=letterbox,
                                  input_range=input_range, limit=20)
    report = compare(src, out, inputs[:20], q_inputs, threads)
    report.update(calibration_samples=len(inputs), float16_weights_widened=widened)
    return report
