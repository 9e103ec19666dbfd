"""CPU microseconds per result, stage by stage, on the real components of the result path.

Stages, each measured in its own loop over the same results (thread CPU time, so other work
on the machine adds no CPU to the figure, only noise):

- ``policy``: :meth:`PrivacyPolicy.result` (filters, counts, the sealed message);
- ``guard``: :meth:`EgressGuard.send` up to the outbox (seal check, JSON serialisation, size
  bound, schema check, the render callback), over a transport that renders and stores nothing;
- ``schema``: the schema check alone (part of ``guard``);
- ``outbox``: :meth:`SqliteOutbox.append` (one transaction per result, WAL, synchronous=NORMAL);
  ``outbox_group_N``: the same with group commit (``mqtt.outbox.commit_ms``), N messages per
  transaction, the commit included;
- ``paho``: ``Client.publish`` at QoS 1 to a local mosquitto until every PUBACK came back
  (process CPU, paho's network thread included), when mosquitto is installed.

Results look like BlazeFace's: 2 faces with 6 key points each. Rounds alternate the stages;
the median of the per-round figures is reported.

Run: ``.venv/bin/python -m benchmarks.result_path`` (prints JSON).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_privacy import _NullTransport  # renders, sends nothing

N = 400  # results per stage and round
GROUPS = (1, 4, 16)  # messages per transaction with group commit (outbox.commit_ms)


def _results(n: int) -> list[Any]:
    from edge_agent.types import Detection, Inference, ModelRef, Result

    model = ModelRef("face_detection_full_range_sparse", 0, "e" * 64)
    out = []
    for i in range(n):
        dets = tuple(
            Detection(0, "face", 0.9 - 0.1 * k, (0.1 + 0.3 * k, 0.2, 0.3 + 0.3 * k, 0.5),
                      keypoints=tuple((0.15 + 0.3 * k + 0.01 * j, 0.3) for j in range(6)))
            for k in range(2))
        out.append(Result("cam", i, time.time(), 640, 480, model, 4.2, Inference(dets), None))
    return out


def _cpu_us(fn: Callable[[], object], n: int) -> float:
    t = time.thread_time()
    fn()
    return (time.thread_time() - t) / n * 1e6


def _paho_us(host: str, port: int, payloads: list[bytes]) -> float:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-result-path")
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    client.on_publish = on_publish
    client.max_inflight_messages_set(len(payloads) + 1)
    client.connect(host, port)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        t = time.process_time()
        for p in payloads:
            client.publish("bench/results/cam", p, qos=1)
        deadline = time.monotonic() + 30
        while acked < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.001)
        return (time.process_time() - t) / len(payloads) * 1e6
    finally:
        client.loop_stop()
        client.disconnect()


def measure(rounds: int = 5, n: int = N) -> dict[str, Any]:
    """The per-stage figures (median over rounds, with min and max)."""
    from edge_agent.config import OutboxConfig, PrivacyConfig
    from edge_agent.mqtt.outbox import SqliteOutbox
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.egress import EgressGuard
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.privacy.schemas import validate
    from edge_agent.privacy.seal import thaw
    from tests.broker import Mosquitto, mosquitto_binary

    seal = new_seal()
    policy = PrivacyPolicy(PrivacyConfig(), "cam", "dev", seal)
    guard = EgressGuard(_NullTransport(), "edge-agent", "dev", None, seal)
    results = _results(n)
    sample = policy.result(results[0])
    payload = json.dumps({**thaw(sample.payload), "id": "0" * 32, "seq": 1}).encode()
    figures: dict[str, list[float]] = {}

    def add(stage: str, value: float) -> None:
        figures.setdefault(stage, []).append(value)

    with tempfile.TemporaryDirectory(prefix="result-path-") as tmp:
        work = Path(tmp)
        outbox = SqliteOutbox(work / "outbox.sqlite", OutboxConfig(max_messages=10**7))
        grouped_box = SqliteOutbox(work / "grouped.sqlite",
                                   OutboxConfig(max_messages=10**7, commit_ms=5))
        broker = None
        if mosquitto_binary() is not None:
            broker = Mosquitto(work / "broker", persistence=False)
            broker.start()
        try:
            for _ in range(rounds):
                msgs: list[Any] = []
                add("policy", _cpu_us(lambda m=msgs: m.extend(policy.result(r)
                                                              for r in results), n))
                plain = [{**thaw(m.payload), "id": "0" * 32, "seq": 1} for m in msgs]
                add("schema", _cpu_us(lambda p=plain: [validate("result", x) for x in p], n))
                add("guard", _cpu_us(lambda m=msgs: [guard.send(x) for x in m], n))

                def one_by_one() -> None:
                    for _ in range(n):
                        outbox.append("cam", "t", lambda s, i: payload, 1, sent=True)

                add("outbox", _cpu_us(one_by_one, n))
                for group in GROUPS:
                    def grouped(g: int = group) -> None:
                        for _ in range(n // g):
                            for _ in range(g):
                                grouped_box.append("cam", "t", lambda s, i: payload, 1,
                                                   sent=True)
                            grouped_box.commit()  # what the pump does once per group

                    add(f"outbox_group_{group}", _cpu_us(grouped, n // group * group))
                grouped_box.ack(m.rowid for m in grouped_box.pending())
                outbox.ack(m.rowid for m in outbox.pending())
                if broker is not None:
                    add("paho", _paho_us(broker.host, broker.port, [payload] * n))
        finally:
            outbox.close()
            grouped_box.close()
            if broker is not None:
                broker.stop()
    import os

    out: dict[str, Any] = {
        "results_per_round": n, "rounds": rounds,
        "result_bytes": len(payload), "load_avg": [round(x, 2) for x in os.getloadavg()],
        "us": {k: {"median": round(statistics.median(v), 1), "min": round(min(v), 1),
                   "max": round(max(v), 1)} for k, v in figures.items()},
    }
    return out


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
