"""The hand-written Prometheus registry against prometheus_client, on what the agent does.

Run: ``.venv/bin/python benchmarks/bench_metrics.py`` (prints JSON). prometheus_client is not a
dependency: put it on ``PYTHONPATH`` (``pip install --target DIR prometheus-client``) to
measure it; without it only ours is measured.

Figures: median CPU nanoseconds per ``observe`` of a labelled histogram child (the pipeline
calls it six times per frame), per ``inc`` of a labelled counter, microseconds to render the
exposition text of 4 pipelines x 6 stages of histograms plus 4 counters, and the import cost
of each module in a fresh interpreter (milliseconds of wall time, median of 5; ours includes
importing the ``edge_agent`` package itself).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import median_cpu_us  # noqa: E402
from edge_agent.prometheus import LATENCY_BUCKETS, Registry  # noqa: E402

PIPELINES = ("a", "b", "c", "d")
STAGES = ("capture", "preprocess", "invoke", "decode", "policy", "publish")


def _per_call_ns(fn: Callable[[], Any], n: int = 200_000) -> float:
    runs = []
    for _ in range(5):
        t = time.process_time_ns()
        for _ in range(n):
            fn()
        runs.append((time.process_time_ns() - t) / n)
    return statistics.median(runs)




def _import_ms(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, cwd=REPO).stdout) for _ in range(5)]
    return statistics.median(runs) * 1e3


def ours() -> dict[str, float]:
    r = Registry()
    h = r.histogram("edge_agent_stage_seconds", "stage", ("pipeline", "stage"))
    c = r.counter("edge_agent_frames_total", "frames", ("pipeline",))
    for p in PIPELINES:
        for s in STAGES:
            h.labels(p, s).observe(0.01)
        c.labels(p).inc()
    child, counter = h.labels("a", "invoke"), c.labels("a")
    return {"observe_ns": _per_call_ns(lambda: child.observe(0.0118)),
            "inc_ns": _per_call_ns(lambda: counter.inc()),
            "render_us": median_cpu_us(r.render),
            "import_ms": _import_ms("edge_agent.prometheus")}


def client() -> dict[str, float]:
    import prometheus_client as pc

    r = pc.CollectorRegistry()
    h = pc.Histogram("edge_agent_stage_seconds", "stage", ("pipeline", "stage"), registry=r,
                     buckets=LATENCY_BUCKETS)
    c = pc.Counter("edge_agent_frames", "frames", ("pipeline",), registry=r)
    for p in PIPELINES:
        for s in STAGES:
            h.labels(p, s).observe(0.01)
        c.labels(p).inc()
    child, counter = h.labels("a", "invoke"), c.labels("a")
    return {"observe_ns": _per_call_ns(lambda: child.observe(0.0118)),
            "inc_ns": _per_call_ns(lambda: counter.inc()),
            "render_us": median_cpu_us(lambda: pc.generate_latest(r)),
            "import_ms": _import_ms("prometheus_client"),
            "version": pc.__version__ if hasattr(pc, "__version__") else "?"}


if __name__ == "__main__":
    out: dict[str, Any] = {"ours": ours()}
    try:
        out["prometheus_client"] = client()
    except ImportError:
        out["prometheus_client"] = "not installed: not measured"
    print(json.dumps({k: {n: round(v, 1) if isinstance(v, float) else v for n, v in d.items()}
                      if isinstance(d, dict) else d for k, d in out.items()}, indent=2))
