"""Latency from capture to the broker's acknowledgement, over the invoke time.

The pipeline runs on a paced 640x480 MJPEG clip (like a camera, at about half the rate the
model could take, so frames do not queue), publishing through the policy, the egress guard,
the SQLite outbox and paho (QoS 1) to a local mosquitto. A subscriber on the same host stamps
every result on arrival; the broker forwards a QoS 1 message to subscribers when it receives
it, at the same time as it sends the PUBACK, so arrival time stands in for PUBACK time (on
loopback the two are well under a millisecond apart).

Per result: ``latency = arrival - ts`` (``ts``: the capture time the source stamped, in the
payload with millisecond precision) and ``added = latency - inference_ms``. Reported: p50 and
p99 of ``added / inference_ms`` and of ``latency / inference_ms``, and the milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import Egress, pct, pipeline_config


def measure(model: Path, labels: Path | None, clip: Path, egress: Egress | None, *,
            threads: int = 2, results: int = 150) -> dict[str, Any]:
    """Latency figures for ``model`` (needs the local broker)."""
    if egress is None:
        return {"model": model.name, "skipped": "mosquitto is not installed"}
    from edge_agent.bundle import load_bundle
    from edge_agent.mqtt.subscriber import Subscriber
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.factory import create_source

    probe = pipeline_config(model, labels, {"type": "video", "uri": str(clip), "fps": 0},
                            threads=threads, name="latency")
    bundle = load_bundle(probe.model, probe.score_threshold)
    import numpy as np

    spec = bundle.runtime.signature.inputs[0]
    x = [np.zeros(spec.shape, spec.dtype)]
    for _ in range(3):
        bundle.runtime.infer(x)
    t = time.perf_counter()
    for _ in range(10):
        bundle.runtime.infer(x)
    invoke_s = (time.perf_counter() - t) / 10
    fps = round(min(30.0, 0.5 / invoke_s), 1)
    pcfg = pipeline_config(model, labels, {"type": "video", "uri": str(clip), "fps": fps,
                                           "loop": True}, threads=threads, name="latency")
    arrivals: list[tuple[float, bytes]] = []
    enough = threading.Event()

    def on_message(_topic: str, payload: bytes, _retained: bool) -> None:
        arrivals.append((time.time(), payload))
        if len(arrivals) >= results + 5:
            enough.set()

    sub = Subscriber(egress.host, egress.port, [f"{egress.prefix}/{egress.device}/results/#"],
                     on_message)
    if not sub.start(10.0):
        sub.stop()
        return {"model": model.name, "skipped": "could not subscribe to the local broker"}
    pipe = Pipeline(pcfg, bundle, source_factory=create_source,
                    policy=PrivacyPolicy(pcfg.privacy, pcfg.name, egress.device, egress.seal),
                    send=egress.guard.send)
    try:
        pipe.start()
        enough.wait(600)
    finally:
        pipe.stop()
        sub.stop()
        bundle.close()
    added, total, inf = [], [], []
    for arrived, payload in arrivals[5:]:  # the first few include start-up
        body = json.loads(payload)
        ts = datetime.fromisoformat(body["ts"].replace("Z", "+00:00")).timestamp()
        ms = float(body["inference_ms"])
        lat = (arrived - ts) * 1000
        total.append(lat / ms)
        added.append((lat - ms) / ms)
        inf.append((lat, ms))
    lats = [a for a, _ in inf]
    return {
        "model": model.name, "threads": threads, "paced_fps": fps, "results": len(added),
        "added_over_invoke": {"p50": round(pct(added, 0.5), 2), "p99": round(pct(added, 0.99), 2)},
        "latency_over_invoke": {"p50": round(pct(total, 0.5), 2),
                                "p99": round(pct(total, 0.99), 2)},
        "latency_ms": {"p50": round(pct(lats, 0.5), 1), "p99": round(pct(lats, 0.99), 1)},
        "invoke_ms": {"p50": round(pct([m for _, m in inf], 0.5), 1),
                      "p99": round(pct([m for _, m in inf], 0.99), 1)},
    }
