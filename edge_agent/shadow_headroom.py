"""Where a shadow candidate may take CPU time: a background priority for its thread, and the
budget that lets a ``when idle`` candidate run only in the active pipeline's idle time.

``when idle`` means headroom, not "nothing queued right now": a candidate run is started only
when the pipeline has no frame waiting and the next frame is not due (by the source's measured
frame interval) before the candidate, by its recent run times, would be done. A source that
runs flat out (fps 0) has no idle time, so there the candidate gets no frames at all, which is
the point: the active model keeps its throughput.

An every-Nth candidate's thread runs at nice 19 (its interpreter's worker threads, created
on it, inherit that). A ``when idle`` candidate's interpreter work (load, warm-up, invoke; the
worker threads are created then and inherit it) runs under ``SCHED_IDLE``, so a run that still
overlaps the next frame yields every core to the active model; its prepare and decode hold the
GIL, which the active pipeline's threads also need, so those run at the thread's normal
priority: a thread that holds the GIL must not wait behind other processes (at nice 19, on a
loaded machine, it did, and the active pipeline lost frames waiting for the lock). Leaving
``SCHED_IDLE`` for nice 0 needs root or ``RLIMIT_NICE`` >= 20 (``LimitNICE=+0`` in the unit: no
priority above the daemon's own); without it the thread runs at nice 19 throughout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

BACKGROUND_NICE = 19
RUN_SAMPLES = 20  # the candidate's newest run times the budget is taken over
RUN_MARGIN = 1.3  # budget = median run time x this + RUN_SLACK_S
RUN_SLACK_S = 0.001


def _can_leave_sched_idle(nice: int) -> bool:
    """Whether this process may switch a thread from SCHED_IDLE back to SCHED_OTHER at nice
    ``nice`` (Linux: root, CAP_SYS_NICE, or RLIMIT_NICE >= 20 - nice)."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_IDLE"):
        return False
    if os.geteuid() == 0:
        return True
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return False
    return soft == resource.RLIM_INFINITY or soft >= 20 - nice


class BackgroundThread:
    """The calling thread's priority as a shadow candidate's worker (Linux; else no-op).

    Args:
        sched_idle: SCHED_IDLE around interpreter work, the normal priority for the rest
            (``when idle`` candidates); else (or when SCHED_IDLE could not be left again)
            nice 19 throughout.
    """

    def __init__(self, sched_idle: bool) -> None:
        self.tid = threading.get_native_id()
        nice = 0
        with contextlib.suppress(AttributeError, OSError):
            nice = os.getpriority(os.PRIO_PROCESS, self.tid)
        self.sched_idle = sched_idle and _can_leave_sched_idle(nice)
        if self.sched_idle:
            self.mode = "SCHED_IDLE while invoking"
            return
        self.mode = "nice 19"
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, self.tid, BACKGROUND_NICE)
        if sched_idle:
            logger.info("shadow candidate: SCHED_IDLE not used (it could not be left again "
                        "without RLIMIT_NICE >= %d); running at nice %d", 20 - nice,
                        BACKGROUND_NICE)

    @contextlib.contextmanager
    def interpreter_work(self) -> Iterator[None]:
        """Run the block (no GIL-holding Python work in it) under SCHED_IDLE if enabled."""
        if not self.sched_idle:
            yield
            return
        entered = False
        try:
            os.sched_setscheduler(self.tid, os.SCHED_IDLE, os.sched_param(0))
            entered = True
        except OSError as exc:
            logger.debug("SCHED_IDLE refused: %s", exc)
        try:
            yield
        finally:
            if entered:
                try:
                    os.sched_setscheduler(self.tid, os.SCHED_OTHER, os.sched_param(0))
                except OSError as exc:  # cannot happen when _can_leave_sched_idle held
                    logger.warning("shadow candidate stays SCHED_IDLE: %s", exc)
                    self.sched_idle = False


class RunBudget:
    """How long the candidate needs for one frame (prepare, invoke, decode), from its newest
    runs: the median times a margin (thread-safe)."""

    def __init__(self) -> None:
        self._runs: deque[float] = deque(maxlen=RUN_SAMPLES)
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._runs.append(seconds)

    def need_s(self) -> float | None:
        """Seconds to reserve for one run, or None before the first measured run."""
        with self._lock:
            if not self._runs:
                return None
            return float(np.median(np.asarray(self._runs))) * RUN_MARGIN + RUN_SLACK_S

    def fits(self, headroom_s: float | None) -> bool:
        """Whether a run fits in ``headroom_s`` seconds (None: unknown, never)."""
        need = self.need_s()
        return headroom_s is not None and need is not None and headroom_s >= need


class ArrivalClock:
    """When the source's next frame is due, from the measured interval between frames
    (the pipeline's capture thread calls :meth:`arrived`; others read :meth:`headroom_s`)."""

    def __init__(self, smoothing: float = 0.2) -> None:
        self._a = smoothing
        self._last: float | None = None
        self._interval: float | None = None

    def arrived(self, t: float) -> None:
        """A frame was read at ``t`` (``time.perf_counter()``)."""
        last = self._last
        if last is not None:
            iv = t - last
            prev = self._interval
            self._interval = iv if prev is None else prev + self._a * (iv - prev)
        self._last = t

    def headroom_s(self, now: float) -> float | None:
        """Seconds until the next frame is due (<= 0: due or late), None before two frames."""
        last, interval = self._last, self._interval
        if last is None or interval is None:
            return None
        return last + interval - now


__all__ = ["ArrivalClock", "BackgroundThread", "RunBudget"]
