"""Outbox cost per result and drain rate after an outage.

* append: p50/p99 microseconds of ``SqliteOutbox.append`` (seq + id + render + commit) with a
  ~600-byte result payload, for ``synchronous`` normal and full;
* ratio: that cost over one invoke of the SSD MobileNet v1 quantised model (when the shared
  models are present), i.e. what the outbox adds per result;
* drain: messages/s from a full outbox to a local mosquitto after the broker comes back.

Run: ``.venv/bin/python benchmarks/bench_outbox.py`` (prints JSON).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.config import OutboxConfig, make_config  # noqa: E402
from edge_agent.mqtt.client import MqttTransport  # noqa: E402
from edge_agent.mqtt.outbox import SqliteOutbox  # noqa: E402
from tests.broker import Mosquitto  # noqa: E402

MODEL = REPO.parent / "shared" / "models" / "coco_ssd_mobilenet_v1_1.0_quant.tflite"


def _result(seq: int, msg_id: str) -> bytes:
    return json.dumps({
        "schema": "edge-agent/result@1", "id": msg_id, "seq": seq, "device": "bench",
        "pipeline": "door", "ts": "2026-11-28T12:00:00.123Z",
        "model": {"name": "detector", "version": 3, "sha256": "ab" * 32},
        "frame": {"index": seq, "width": 1280, "height": 720}, "inference_ms": 11.8,
        "detections": [{"label": "person", "class_id": 0, "score": 0.87,
                        "box": [0.12, 0.30, 0.45, 0.98]}] * 3,
        "counts": {"person": 3}}, separators=(",", ":")).encode()


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_us": round(statistics.median(samples), 1),
            "p99_us": round(samples[int(len(samples) * 0.99) - 1], 1),
            "mean_us": round(statistics.fmean(samples), 1)}


def bench_append(n: int = 5000) -> dict[str, Any]:
    """Append cost in microseconds for each durability setting."""
    out: dict[str, Any] = {}
    for sync in ("normal", "full"):
        with tempfile.TemporaryDirectory() as tmp:
            box = SqliteOutbox(Path(tmp) / "outbox.sqlite", OutboxConfig(synchronous=sync))
            for _ in range(200):  # warm-up
                box.append("door", "t", _result, 1)
            # as in the transport: checkpoints run once a second on another thread
            stop = threading.Event()

            def checkpoints(box: SqliteOutbox = box, stop: threading.Event = stop) -> None:
                while not stop.wait(1.0):
                    box.checkpoint()

            worker = threading.Thread(target=checkpoints)
            worker.start()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                box.append("door", "t", _result, 1)
                times.append((time.perf_counter() - t0) * 1e6)
            stop.set()
            worker.join()
            box.close()
        out[sync] = _percentiles(times)
    return out


def bench_invoke_ms(n: int = 50) -> float | None:
    """Median invoke time (ms) of the SSD MobileNet v1 model, or None without the model."""
    if not MODEL.exists():
        return None
    from edge_agent.runtime.interpreter import load_runtime

    runtime = load_runtime(MODEL, threads=2)
    spec = runtime.signature.inputs[0]
    x = np.zeros(spec.shape, dtype=np.dtype(spec.dtype))
    for _ in range(5):
        runtime.infer([x])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        runtime.infer([x])
        times.append((time.perf_counter() - t0) * 1e3)
    runtime.close()
    return round(statistics.median(times), 2)


def bench_drain(n: int = 20000) -> dict[str, Any]:
    """Fill the outbox with the broker down, start it, time until every message is acked."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        cfg = make_config(state_dir=tmp, mqtt={"host": broker.host, "port": broker.port,
                                               "reconnect_max_s": 0.5})
        transport = MqttTransport(cfg, Path(tmp))
        transport.start()
        try:
            for _ in range(n):
                transport.publish_durable("door", transport.topics.results("door"), _result)
            broker.start()
            t0 = time.perf_counter()
            while transport.stats()["outbox_depth"] and time.perf_counter() - t0 < 120:
                time.sleep(0.005)
            elapsed = time.perf_counter() - t0
            stats = transport.stats()
            depth = stats["outbox_depth"]
        finally:
            transport.stop(2)
            broker.stop()
    return {"messages": n, "seconds": round(elapsed, 2), "left": depth,
            "msgs_per_s": round((n - depth) / elapsed), "window": transport.window,
            "reconnects": stats["reconnects"], "replayed": stats["replayed"],
            "note": "includes up to reconnect_max_s=0.5 s of reconnect wait"}


def run() -> dict[str, Any]:
    """All measurements as a dict."""
    append = bench_append()
    invoke_ms = bench_invoke_ms()
    result: dict[str, Any] = {"append": append, "invoke_ms_ssd_mobilenet_v1": invoke_ms}
    if invoke_ms:
        result["ratio_to_invoke"] = {
            sync: {"p50": round(v["p50_us"] / 1000 / invoke_ms, 4),
                   "p99": round(v["p99_us"] / 1000 / invoke_ms, 4)} for sync, v in append.items()}
    result["drain"] = bench_drain()
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
