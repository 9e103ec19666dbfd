"""int8 against float for the same model.

* **BlazeFace short range** (a default model, float16 weights; the full-range one has sparse
  weights, which post-training quantisation cannot take): quantised to full integer by
  ``edge-agent model quantize``'s code path (``quantize_model``), calibrated on the sample
  images; then invoke time (alternating blocks, same threads) and the faces each finds on the
  test images (count, and IoU of matched boxes).
* **hello_world** (../shared/models/sensor): the TFLM sine model in int8 and float32: invoke
  time and mean absolute error against sin(x).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import SHARED_MODELS, default_model, interleave, ratio


def _rate(runtime: Any, x: list[np.ndarray], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        runtime.infer(x)
    return n / (time.perf_counter() - t)


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _images(work: Path) -> Path:
    """A calibration/test folder: the bundled samples plus the shared test photos."""
    import cv2

    folder = work / "calibration"
    folder.mkdir(exist_ok=True)
    model, _ = default_model()
    sources = sorted((model.parent / "samples").glob("*.png"))
    for name in ("face.jpg", "grace_hopper.bmp", "zidane.jpg", "squat.bmp", "cat.bmp"):
        if (SHARED_MODELS / "images" / name).exists():
            sources.append(SHARED_MODELS / "images" / name)
    for src in sources:
        if cv2.imread(str(src)) is not None:
            shutil.copy(src, folder / src.name)
    return folder


def blazeface(work: Path, *, threads: int = 2, rounds: int = 5) -> dict[str, Any]:
    """Float vs int8 BlazeFace short range."""
    import cv2

    from edge_agent.bundle import load_bundle
    from edge_agent.config import ModelConfig
    from edge_agent.runtime.quantize import quantize_model
    from edge_agent.types import Frame

    full, labels = default_model()
    model = full.parent / "face_detection_short_range.tflite"
    if not model.exists():
        return {"skipped": f"{model} is missing (edge-agent models fetch)"}
    folder = _images(work)
    int8 = work / "face_int8.tflite"
    t = time.perf_counter()
    quantize_model(model, folder, int8, letterbox=True, threads=threads, limit=50)
    quant_s = time.perf_counter() - t
    bundles = {k: load_bundle(ModelConfig(path=p, labels=labels, threads=threads), 0.5)
               for k, p in (("float", model), ("int8", int8))}
    faces: dict[str, dict[str, list[Any]]] = {"float": {}, "int8": {}}
    for img_path in sorted(folder.iterdir()):
        image = cv2.imread(str(img_path))
        for k, b in bundles.items():
            x, tr = b.prepare(Frame(0, 0.0, image=image))
            faces[k][img_path.name] = [d.box for d in b.decode(b.runtime.infer(x), tr).detections]
    ious, found_f, found_q = [], 0, 0
    for name, fboxes in faces["float"].items():
        qboxes = faces["int8"][name]
        found_f += len(fboxes)
        found_q += len(qboxes)
        for fb in fboxes:
            ious.append(max((_iou(fb, qb) for qb in qboxes), default=0.0))
    xs = {}
    for k, b in bundles.items():
        image = cv2.imread(str(next(iter(sorted(folder.iterdir())))))
        x, _ = b.prepare(Frame(0, 0.0, image=image))
        xs[k] = [a.copy() for a in x]
        for _ in range(5):
            b.runtime.infer(xs[k])
    rates = interleave({k: (lambda k=k: _rate(bundles[k].runtime, xs[k], 100))
                        for k in bundles}, rounds)
    for b in bundles.values():
        b.close()
    return {
        "model": model.name, "threads": threads, "quantize_s": round(quant_s, 1),
        "size_bytes": {"float": model.stat().st_size, "int8": int8.stat().st_size},
        "invoke_ms": {k: round(1000 / sorted(v)[len(v) // 2], 2) for k, v in rates.items()},
        "int8_speed_over_float": ratio(rates["int8"], rates["float"]),
        "images": len(faces["float"]),
        "faces_found": {"float": found_f, "int8": found_q},
        "matched_iou_mean": round(float(np.mean(ious)), 3) if ious else None,
        "matched_iou_min": round(float(np.min(ious)), 3) if ious else None,
    }


def hello_world(*, rounds: int = 5) -> dict[str, Any]:
    """The TFLM sine model, int8 vs float32."""
    from edge_agent.runtime.interpreter import load_runtime

    paths = {"float": SHARED_MODELS / "sensor" / "hello_world_float.tflite",
             "int8": SHARED_MODELS / "sensor" / "hello_world_int8.tflite"}
    if not all(p.exists() for p in paths.values()):
        return {"skipped": "../shared/models/sensor is not on this machine"}
    rts = {k: load_runtime(p, threads=1) for k, p in paths.items()}
    xs_real = np.linspace(0, 2 * math.pi, 50, dtype=np.float32)
    errors: dict[str, float] = {}
    inputs: dict[str, list[np.ndarray]] = {}
    for k, rt in rts.items():
        si, so = rt.signature.inputs[0], rt.signature.outputs[0]
        errs = []
        for v in xs_real:
            if si.quantized:
                q = np.clip(np.rint(v / si.scale + si.zero_point), -128, 127)
                x = np.array([[q]], dtype=si.dtype)
            else:
                x = np.array([[v]], dtype=np.float32)
            y = float(so.dequantize(rt.infer([x])[0]).reshape(-1)[0])
            errs.append(abs(y - math.sin(float(v))))
            inputs[k] = [x]
        errors[k] = float(np.mean(errs))
    rates = interleave({k: (lambda k=k: _rate(rts[k], inputs[k], 5000)) for k in rts}, rounds)
    for rt in rts.values():
        rt.close()
    return {
        "model": "hello_world (sine)", "threads": 1,
        "invoke_us": {k: round(1e6 / sorted(v)[len(v) // 2], 2) for k, v in rates.items()},
        "int8_speed_over_float": ratio(rates["int8"], rates["float"]),
        "mean_abs_error": {k: round(v, 4) for k, v in errors.items()},
        "size_bytes": {k: p.stat().st_size for k, p in paths.items()},
    }
