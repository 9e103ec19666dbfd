"""The watch after a swap: count the new model's inferences and judge them.

A watch ends after ``watch_inferences`` inferences or ``watch_seconds``, whichever comes
first (0 disables that limit). It fails as soon as more than ``max_failure_ratio`` of the
watched inferences have failed (an error, or non-finite outputs): early, once the failures
alone exceed the ratio of ``watch_inferences``; else at the end, over the inferences seen.
A watch passes only after ``watch_min_inferences`` inferences of the new model: one that
reaches its end with fewer (e.g. a motion-gated pipeline on a quiet scene) goes on until it
has them, and fails at ``watch_max_seconds`` (the model is rolled back: nothing showed it
works).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.config import UpdatesConfig

Verdict = Literal["fail", "pass"] | None


@dataclass
class ModelWatch:
    """Counters of one watch; :meth:`record` runs on the pipeline thread (under a lock held
    by the caller), :meth:`verdict` on the updater thread.

    Attributes:
        wake: set when a decision may be due (limit reached, failures over the ratio, or a
            manual rollback).
        manual: request_id of a manual rollback asked for during the watch.
    """

    sha256: str
    about: dict[str, Any]
    request_id: str
    config: UpdatesConfig
    started: float = field(default_factory=time.monotonic)
    n: int = 0
    errors: int = 0
    non_finite: int = 0
    manual: str | None = None
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def enabled(self) -> bool:
        """Whether there is anything to watch."""
        return self.config.watch_inferences > 0 or self.config.watch_seconds > 0

    @property
    def failures(self) -> int:
        """Errors plus non-finite outputs."""
        return self.errors + self.non_finite

    @property
    def deadline(self) -> float | None:
        """When the watch is next due a decision by time (monotonic), or None."""
        if not self.config.watch_seconds:
            return None
        end = self.started + self.config.watch_seconds
        if self.n < self.config.watch_min_inferences and time.monotonic() >= end:
            return self.started + self.config.watch_max_seconds
        return end

    def record(self, ok: bool, finite: bool) -> None:
        """Count one inference of the watched model."""
        self.n += 1
        if not ok:
            self.errors += 1
        elif not finite:
            self.non_finite += 1
        limit = self.config.watch_inferences
        if limit and (self.n >= limit or self.failures > self.config.max_failure_ratio * limit):
            self.wake.set()

    def verdict(self, now: float | None = None) -> Verdict:
        """"fail", "pass", or None while the watch goes on."""
        now = time.monotonic() if now is None else now
        cfg = self.config
        limit = cfg.watch_inferences
        deadline = self.deadline
        if limit and self.failures > cfg.max_failure_ratio * limit:
            return "fail"
        ended = bool(limit and self.n >= limit) or (deadline is not None and now >= deadline)
        if not ended:
            return None
        if self.n < cfg.watch_min_inferences:
            if now - self.started >= cfg.watch_max_seconds:
                return "fail"
            return None
        if self.n and self.failures / self.n > cfg.max_failure_ratio:
            return "fail"
        return "pass"

    def failing_so_far(self) -> bool:
        """Whether the inferences seen so far are over the ratio (for a stop mid-watch)."""
        return bool(self.n) and self.failures / self.n > self.config.max_failure_ratio

    def reason(self) -> str:
        """Why the watch failed, for the rolled_back state message."""
        if self.n < self.config.watch_min_inferences:
            return (f"only {self.n} inferences in {self.config.watch_max_seconds:g} s of watch "
                    f"(watch_min_inferences {self.config.watch_min_inferences}): nothing "
                    "showed the model works")
        return (f"{self.failures} of {self.n} inferences failed during the watch "
                f"({self.errors} errors, {self.non_finite} non-finite outputs; "
                f"max_failure_ratio {self.config.max_failure_ratio:g})")
