"""``model: {threads: auto}``: pick the interpreter's thread count by a short measurement.

At load (start, and again for every model an update or swap loads) the model is run on the CPU
with 1, 2, ... up to the threads this process can still give it (the machine's CPUs minus the
threads other pipelines' interpreters already use, at least 1): one interpreter per candidate,
each warmed up once, then timed invokes on a zero input, the candidates taking turns in slices
of ``SLICE_S`` (each opened by an untimed invoke: the first one after another candidate's turn
finds caches and worker threads cold) until each has run for ``MEASURE_S`` (and at least
``invokes`` times). Taking turns matters: the machine's load drifts (another process, the
other pipelines), and candidates measured one after the other in a few milliseconds each would
each see a different moment of it (measured: on a 2-core machine with a process busy 100 ms
in every 200 ms, five invokes per candidate in a row picked 1 thread for BlazeFace 5 times in
12 and 2 threads 7 times). The choice is the fewest threads whose median invoke time is within
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
INVOKES = 5  # timed invokes per candidate at least, after one warm-up
MEASURE_S = 0.2  # seconds of timed invokes per candidate at least (taken in turns)
SLICE_S = 0.05  # one turn: this long (at least one invoke) before the next candidate runs
MAX_INVOKES = 400  # per candidate: a tiny model stops here rather than at MEASURE_S


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
    runtimes: dict[int, TfliteRuntime] = {}
    try:
        for n in candidates:
            runtimes[n] = TfliteRuntime(path, threads=n, delegate=None, backend=backend)
        inputs = [np.zeros(t.shape, np.dtype(t.dtype)) for t in runtimes[1].signature.inputs]
        for rt in runtimes.values():
            rt.infer(inputs)  # warm-up: XNNPACK packs weights on the first run
        times: dict[int, list[float]] = {n: [] for n in candidates}
        spent = dict.fromkeys(candidates, 0.0)

        def wanted(n: int) -> bool:
            done = len(times[n])
            return done < MAX_INVOKES and (done < max(1, invokes) or spent[n] < MEASURE_S)

        while any(wanted(n) for n in candidates):
            for n in candidates:  # one slice each, in turn
                if not wanted(n):
                    continue
                # untimed: the first invoke after another candidate's turn finds the caches
                # and this interpreter's worker threads cold, back-to-back ones do not
                runtimes[n].infer(inputs)
                turn_end = time.perf_counter() + SLICE_S
                while wanted(n):
                    t0 = time.perf_counter()
                    runtimes[n].infer(inputs)
                    took = time.perf_counter() - t0
                    times[n].append(took * 1000.0)
                    spent[n] += took
                    if t0 + took >= turn_end:
                        break
        medians = {n: round(statistics.median(ts), 3) for n, ts in times.items()}
    finally:
        for rt in runtimes.values():
            rt.close()
    best = min(medians.values())
    threads = min(n for n, ms in medians.items() if ms <= best * (1.0 + TOLERANCE))
    return ThreadChoice(threads, candidates, medians)
