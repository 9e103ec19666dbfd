"""``model: {threads: auto}``: pick the interpreter's thread count by a short measurement.

At load (start, and again for every model an update or swap loads) the model is run on the CPU
with 1, 2, ... up to the threads this process can still give it (the machine's CPUs minus the
threads other pipelines' interpreters already use, at least 1): a warm-up run, then a few timed
invokes on a zero input. The choice is the fewest threads whose median invoke time is within
``TOLERANCE`` of the fastest: a thread that buys less than that is not worth its CPU.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.runtime.interpreter import TfliteRuntime

logger = logging.getLogger(__name__)

TOLERANCE = 0.05  # fewer threads win when they are at most 5% slower than the fastest
INVOKES = 5  # timed invokes per candidate, after one warm-up


@dataclass(frozen=True)
class ThreadChoice:
    """The picked count, the candidates tried and each one's median invoke time (ms)."""

    threads: int
    candidates: tuple[int, ...]
    median_ms: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: the choice and what it was chosen from."""
        tried = ", ".join(f"{n}: {ms:.2f} ms" for n, ms in sorted(self.median_ms.items()))
        return f"threads auto -> {self.threads} (median invoke {tried})"


def cpu_budget(others: int, cpus: int | None = None) -> int:
    """The most threads a new interpreter may take: CPUs left by ``others``, at least 1."""
    try:
        n = cpus if cpus is not None else len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n - max(0, others))


def pick_threads(path: str | Path, *, budget: int, invokes: int = INVOKES,
                 backend: str | None = None) -> ThreadChoice:
    """Measure ``path`` on the CPU with 1..``budget`` threads and pick (see the module doc).

    Raises:
        ModelError: the model does not load (the same error a fixed count would give).
    """
    candidates = tuple(range(1, max(1, budget) + 1))
    medians: dict[int, float] = {}
    if len(candidates) == 1:
        return ThreadChoice(1, candidates, medians)
    for n in candidates:
        rt = TfliteRuntime(path, threads=n, delegate=None, backend=backend)
        try:
            inputs = [np.zeros(t.shape, np.dtype(t.dtype)) for t in rt.signature.inputs]
            rt.infer(inputs)  # warm-up: XNNPACK packs weights on the first run
            times = []
            for _ in range(max(1, invokes)):
                t0 = time.perf_counter()
                rt.infer(inputs)
                times.append((time.perf_counter() - t0) * 1000.0)
            medians[n] = round(statistics.median(times), 3)
        finally:
            rt.close()
    best = min(medians.values())
    threads = min(n for n, ms in medians.items() if ms <= best * (1.0 + TOLERANCE))
    return ThreadChoice(threads, candidates, medians)
