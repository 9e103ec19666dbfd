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

That measures the model alone. In the running pipeline the interpreter's threads share the
CPUs with the pipeline's own work (reading and decoding frames, preparing inputs, publishing)
and with the other pipelines, and on a small machine that work can make fewer threads the
faster pipeline (measured on 2 CPUs: BlazeFace ran 1.4x faster alone at 2 threads, but its
pipeline 1.24x faster at 1). So once a pipeline has run ``TRIAL_WARMUP_S``, a
:class:`PipelineTrial` tries the candidates again in the pipeline itself: each serves the
real frames in turn (``TRIAL_ROUNDS`` rounds of at least ``TRIAL_SLICE_S`` and
``TRIAL_SLICE_FRAMES`` frames each), and the pipeline keeps the fewest threads whose median
frames per second is within ``TOLERANCE`` of the best. A camera that delivers fewer frames than
either count can infer thus gets the fewest threads. Pauses longer than ``TRIAL_GAP_S``
between two frames (a motion gate that is closed, a slow sensor) are not counted, nor, for a
slow model, longer than three of its slowest invokes at load; a pipeline that has not inferred
enough frames for the trial within ``TRIAL_DEADLINE_S`` (plus twice the trial's frames at that
invoke time) keeps the pick made at load.

Trials in several pipelines of one process take a :class:`TrialSlot` in turn: one measures at a
time, so none sees another switching its interpreters, and each later one measures beside the
counts the earlier ones settled on. When the set of pipelines changes (a reload adds or removes
one), every other ``threads: auto`` pipeline tries its counts again beside the new set: the
candidates are 1 up to the CPUs the other pipelines' interpreters now leave it, or the count
serving now if that is more.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtime.interpreter import TfliteRuntime

logger = logging.getLogger(__name__)

TOLERANCE = 0.05  # fewer threads win when they are at most 5% slower than the fastest
INVOKES = 5  # timed invokes per candidate at least, after one warm-up
MEASURE_S = 0.2  # seconds of timed invokes per candidate at least (taken in turns)
SLICE_S = 0.05  # one turn: this long (at least one invoke) before the next candidate runs
MAX_INVOKES = 400  # per candidate: a tiny model stops here rather than at MEASURE_S
TRIAL_WARMUP_S = 3.0  # the pipeline runs this long on the load-time pick before its trial
TRIAL_SLICE_S = 1.0  # one candidate's turn in the pipeline: this long (frames flowing) ...
TRIAL_SLICE_FRAMES = 10  # ... and at least this many frames, the first after a switch not counted
TRIAL_ROUNDS = 3  # turns per candidate
TRIAL_GAP_S = 0.5  # a longer pause between two frames is not counted (gate closed, slow source)
TRIAL_DEADLINE_S = 120.0  # not enough frames by then: the load-time pick stays


@dataclass(frozen=True)
class ThreadChoice:
    """The picked count, the candidates tried and each one's median invoke time (ms)."""

    threads: int
    candidates: tuple[int, ...]
    median_ms: dict[int, float] = field(default_factory=dict)
    # after the trial in the running pipeline: each candidate's median frames per second and
    # the process's CPU ms per frame in its turns (empty before, or when it did not run)
    pipeline_fps: dict[int, float] = field(default_factory=dict)
    pipeline_cpu_ms: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One log line: the choice and what it was chosen from."""
        if self.pipeline_fps:
            tried = ", ".join(f"{n}: {fps:.1f} fps, {self.pipeline_cpu_ms.get(n, 0.0):.2f} ms CPU"
                              for n, fps in sorted(self.pipeline_fps.items()))
            return f"threads auto -> {self.threads} in the pipeline (per frame {tried})"
        if not self.median_ms:  # one candidate: nothing was measured
            return (f"threads auto -> {self.threads} (the only count: the process's CPUs "
                    "less the other pipelines' interpreter threads leave no more)")
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


def choice_again(choice: ThreadChoice, serving: int, budget: int) -> ThreadChoice | None:
    """What a trial made again starts from: the count serving now, and candidates 1 up to
    ``budget`` or ``serving``, whichever is more; None when that leaves one candidate."""
    candidates = tuple(range(1, max(1, budget, serving) + 1))
    if len(candidates) < 2:
        return None
    return replace(choice, threads=serving, candidates=candidates, pipeline_fps={},
                   pipeline_cpu_ms={})


class TrialSlot:
    """One :class:`PipelineTrial` measuring at a time in this process (the pipeline set hands
    the same slot to every pipeline)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: object | None = None

    def take(self, trial: object) -> bool:
        """Whether ``trial`` may measure now (it then holds the slot until it releases it)."""
        with self._lock:
            if self._holder is None:
                self._holder = trial
            return self._holder is trial

    def release(self, trial: object) -> None:
        """``trial`` is done; nothing happens if it did not hold the slot."""
        with self._lock:
            if self._holder is trial:
                self._holder = None


class PipelineTrial:
    """``threads: auto``'s second look, in the running pipeline (see the module doc).

    Driven by the pipeline's inference thread: :meth:`frame_done` after every inference,
    between frames, which is also when it switches the serving interpreter. ``runtime`` is the
    bundle's runtime (``cpu_variant(threads)`` and ``exchange(interpreter)``, see
    :class:`~edge_agent.runtime.targets.TargetRuntime`); ``clock`` and ``cpu`` are the wall and
    process CPU clocks (tests drive them). ``slot``: taken before measuring, released at the
    end (None: measure without waiting for other pipelines' trials). A trial made again while
    the pipeline runs gets a ``choice`` whose ``threads`` is the count serving now, which an
    undecided trial keeps.
    """

    def __init__(self, runtime: Any, choice: ThreadChoice, *, slot: TrialSlot | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self.runtime = runtime
        self.load_choice = choice
        self.choice: ThreadChoice | None = None  # the outcome, once decided
        self.active = True
        self._slot = slot
        self._clock, self._cpu = clock, cpu
        self._serving = choice.threads
        self._spare: dict[int, Any] = {}  # the candidates' interpreters not serving now
        order = list(choice.candidates)
        # the turns: forward, then backward, ... so that a drift weighs on every candidate alike
        self._turns = [n for r in range(TRIAL_ROUNDS) for n in (order if r % 2 == 0
                                                                  else order[::-1])]
        # a slow model's frames are far apart without any pause: the limits grow with the
        # slowest candidate's invoke measured at load
        slowest_s = max(choice.median_ms.values(), default=0.0) / 1000.0
        self._gap_limit = max(TRIAL_GAP_S, 3.0 * slowest_s)
        self._deadline_s = TRIAL_DEADLINE_S + 2.0 * len(self._turns) * (
            TRIAL_SLICE_FRAMES + 1) * slowest_s
        self._fps: dict[int, list[float]] = {n: [] for n in order}
        self._cpu_ms: dict[int, list[float]] = {n: [] for n in order}
        self._start: float | None = None  # the first frame
        self._measuring_since: float | None = None
        self._last: tuple[float, float] | None = None  # (wall, cpu) of the previous frame
        self._frames = 0
        self._wall = self._cpu_s = 0.0

    def frame_done(self) -> None:
        """One frame inferred: count it, and move on to the next turn or decide when due."""
        if not self.active:
            return
        now, cpu = self._clock(), self._cpu()
        if self._measuring_since is None:
            if self._start is None:
                self._start = now
            elif now - self._start >= TRIAL_WARMUP_S and (self._slot is None
                                                          or self._slot.take(self)):
                self._begin(now)  # (else another pipeline's trial measures: wait for it)
            return
        if self.overdue():
            return
        last, self._last = self._last, (now, cpu)
        if last is None:  # the first frame after a switch opens the turn, uncounted
            return
        gap = now - last[0]
        if gap > self._gap_limit:
            return
        self._frames += 1
        self._wall += gap
        self._cpu_s += max(0.0, cpu - last[1])
        if self._wall >= TRIAL_SLICE_S and self._frames >= TRIAL_SLICE_FRAMES:
            n = self._turns.pop(0)
            self._fps[n].append(self._frames / self._wall)
            self._cpu_ms[n].append(1000.0 * self._cpu_s / self._frames)
            if self._turns:
                self._serve(self._turns[0])
            else:
                self._decide()

    def overdue(self) -> bool:
        """Whether the trial ran out of time (checked by :meth:`frame_done`, and by the
        pipeline while no frame comes): the load-time pick then stays, the spare
        interpreters are closed."""
        since = self._measuring_since
        if not self.active or since is None or self._clock() - since <= self._deadline_s:
            return False
        logger.info("threads auto: the pipeline did not infer enough frames in %.0f s to "
                    "compare thread counts; keeping %d", self._deadline_s,
                    self.load_choice.threads)
        self._finish(self.load_choice.threads)
        return True

    def abort(self) -> None:
        """Stop without deciding (the pipeline stops, or swaps its model): the interpreter
        serving now stays, the others are closed."""
        if self.active:
            self.active = False
            self._close_spares()
            if self._slot is not None:
                self._slot.release(self)

    # ------------------------------------------------------------------ internals

    def _begin(self, now: float) -> None:
        try:
            for n in self.load_choice.candidates:
                if n != self._serving:
                    variant = self.runtime.cpu_variant(n)
                    if variant is None:  # a delegate serves: nothing to try
                        self.abort()
                        return
                    self._spare[n] = variant
        except Exception as exc:  # a count that does not load: the load-time pick stays
            logger.warning("threads auto: no trial in the pipeline (%s)", exc)
            self.abort()
            return
        self._measuring_since = now
        self._serve(self._turns[0])

    def _serve(self, threads: int) -> None:
        self._last, self._frames, self._wall, self._cpu_s = None, 0, 0.0, 0.0
        if threads == self._serving:
            return
        variant = self._spare.pop(threads)
        old = self.runtime.exchange(variant)
        if old is None:  # the runtime failed over to a delegate meanwhile
            self._spare[threads] = variant
            self.abort()
            return
        self._spare[self._serving] = old
        self._serving = threads

    def _decide(self) -> None:
        fps = {n: round(statistics.median(v), 2) for n, v in self._fps.items()}
        best = max(fps.values())
        threads = min(n for n, f in fps.items() if f >= best * (1.0 - TOLERANCE))
        cpu_ms = {n: round(statistics.median(v), 2) for n, v in self._cpu_ms.items()}
        self.choice = replace(self.load_choice, threads=threads, pipeline_fps=fps,
                              pipeline_cpu_ms=cpu_ms)
        logger.info("%s", self.choice.describe())
        self._finish(threads)

    def _finish(self, threads: int) -> None:
        """Serve with ``threads`` and end the trial."""
        if threads != self._serving and threads in self._spare:
            self._serve(threads)
        self.abort()

    def _close_spares(self) -> None:
        spares, self._spare = self._spare, {}
        for rt in spares.values():
            try:
                rt.close()
            except Exception:  # closing must not stop the pipeline
                logger.warning("threads auto: closing an interpreter failed", exc_info=True)
