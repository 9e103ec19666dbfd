"""Throughput: the pipeline against the bare interpreter and against the usual script.

For each model and interpreter thread count, on the same 640x480 MJPEG clip (unpaced):

* **bare**: ``invoke()`` back to back on one preprocessed real frame (same interpreter);
* **sequential**: the usual hand-written loop, one step after the other: read (MJPEG decode)
  -> resize -> invoke -> decode -> policy -> JSON (it publishes nothing);
* **pipeline**: edge-agent's pipeline, publishing every result through the privacy policy, the
  egress guard, the SQLite outbox and a local mosquitto (QoS 1);
* **untuned**: the same pipeline without its process tuning (OpenCV's default thread pool,
  Python's 5 ms GIL interval), to show what the tuning is worth;
* **full decode**: for a model whose input is at most half the clip's size on both sides
  (BlazeFace's 192x192 on 640x480), the pipeline with ``Tuning.model_scale_decode`` off, so
  every frame is decoded in full as before (the baseline of decoding at the model's scale).

The runs alternate in short blocks (see ``common.interleave``); each ratio is the median of
per-round ratios.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Egress,
    ResultCounter,
    interleave,
    pct,
    pipeline_config,
    ratio,
    steady_rate,
)


def _block_size(ms: float, seconds: float) -> int:
    return int(max(12, min(300, seconds * 1000 / max(ms, 0.1))))


def measure_model(model: Path, labels: Path | None, clip: Path, egress: Egress | None, *,
                  threads: int, rounds: int, block_s: float, untuned: bool = True
                  ) -> dict[str, Any]:
    """Bare, sequential and pipeline rates for one model and thread count."""
    import cv2

    from edge_agent.bundle import load_bundle
    from edge_agent.pipeline import DEFAULT_TUNING, Pipeline, Tuning, apply_process_tuning
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.encoded import scale_factor
    from edge_agent.sources.factory import create_source
    from edge_agent.types import Result

    apply_process_tuning(DEFAULT_TUNING)  # bare and sequential run under the same settings
    source = {"type": "video", "uri": str(clip), "fps": 0, "loop": True}
    pcfg = pipeline_config(model, labels, source, threads=threads)
    bundle = load_bundle(pcfg.model, pcfg.score_threshold)
    seal = egress.seal if egress is not None else new_seal()
    src = create_source(pcfg.source)
    src.open()
    frame = None
    while frame is None:
        frame = src.read(1.0)
    src.close()
    pre = bundle.preprocessor
    decode_scale = 1 if pre is None else scale_factor(frame.width, frame.height, pre.width,
                                                      pre.height)
    x, _ = bundle.prepare(frame)
    x = [a.copy() for a in x]
    for _ in range(3):
        bundle.runtime.infer(x)
    t = time.perf_counter()
    for _ in range(5):
        bundle.runtime.infer(x)
    n = _block_size((time.perf_counter() - t) * 200, block_s)
    cpu: dict[str, list[float]] = {"sequential": [], "pipeline": [], "bare": []}
    invoke_ms: list[float] = []
    sink_bytes = [0]

    def bare() -> float:
        c = time.process_time()
        t0 = time.perf_counter()
        for _ in range(n):
            a = time.perf_counter()
            bundle.runtime.infer(x)
            invoke_ms.append((time.perf_counter() - a) * 1000)
        rate = n / (time.perf_counter() - t0)
        cpu["bare"].append((time.process_time() - c) / n)
        return rate

    def sequential() -> float:
        policy = PrivacyPolicy(pcfg.privacy, pcfg.name, "bench", seal)
        s = create_source(pcfg.source)
        s.open()
        times: list[float] = []
        c = time.process_time()
        try:
            while len(times) < n + 2:
                f = s.read(1.0)
                if f is None:
                    continue
                inputs, transform = bundle.prepare(f)
                a = time.perf_counter()
                outs = bundle.runtime.infer(inputs)
                ms = (time.perf_counter() - a) * 1000
                inf = bundle.decode(outs, transform)
                msg = policy.result(Result(pcfg.name, f.index, f.ts, f.width, f.height,
                                           bundle.ref, ms, inf))
                if msg is not None:
                    sink_bytes[0] += len(json.dumps(dict(msg.payload), default=str))
                times.append(time.perf_counter())
        finally:
            s.close()
        cpu["sequential"].append((time.process_time() - c) / len(times))
        return steady_rate(times)

    def run_pipeline(tuning: Tuning | None, key: str | None) -> float:
        policy = PrivacyPolicy(pcfg.privacy, pcfg.name, "bench", seal)
        counter = ResultCounter(egress.guard.send if egress is not None
                                else (lambda _m: True), n + 2)
        pipe = Pipeline(pcfg, bundle, source_factory=create_source, policy=policy,
                        send=counter.send, tuning=tuning)
        c = time.process_time()
        pipe.start()
        counter.done.wait(600)
        pipe.stop()
        if key is not None:
            cpu.setdefault(key, []).append((time.process_time() - c)
                                           / max(1, len(counter.times)))
        return steady_rate(counter.times)

    def untuned_pipeline() -> float:
        old_threads, old_interval = cv2.getNumThreads(), sys.getswitchinterval()
        cv2.setNumThreads(os.cpu_count() or 1)
        sys.setswitchinterval(0.005)
        try:
            return run_pipeline(Tuning(cv2_threads=None, switch_interval_s=None), None)
        finally:
            cv2.setNumThreads(old_threads)
            sys.setswitchinterval(old_interval)

    runs = {"bare": bare, "sequential": sequential,
            "pipeline": lambda: run_pipeline(None, "pipeline")}
    if untuned:
        runs["untuned"] = untuned_pipeline
    if decode_scale > 1:
        runs["full_decode"] = lambda: run_pipeline(Tuning(model_scale_decode=False),
                                                   "pipeline_full_decode")
    rates = interleave(runs, rounds)
    bundle.close()
    med = {k: round(sorted(v)[len(v) // 2], 2) for k, v in rates.items()}
    out: dict[str, Any] = {
        "model": model.name, "threads": threads, "frames_per_block": n, "rounds": rounds,
        "fps": med,
        "pipeline_over_bare": ratio(rates["pipeline"], rates["bare"]),
        "pipeline_over_sequential": ratio(rates["pipeline"], rates["sequential"]),
        "sequential_over_bare": ratio(rates["sequential"], rates["bare"]),
        "invoke_ms_p50": round(pct(invoke_ms, 0.5), 2),
        "cpu_ms_per_frame": {k: round(1000 * sorted(v)[len(v) // 2], 2)
                             for k, v in cpu.items() if v},
        "published_to": "mosquitto via EgressGuard + MqttTransport (outbox)"
        if egress is not None else "a counting sink (mosquitto not installed)",
    }
    if untuned:
        out["pipeline_over_untuned"] = ratio(rates["pipeline"], rates["untuned"])
    if decode_scale > 1:
        out["decode_scale"] = decode_scale
        out["full_decode_over_bare"] = ratio(rates["full_decode"], rates["bare"])
    return out
