"""Jittered exponential backoff for broker reconnects.

paho's ``reconnect_delay_set`` doubles a fixed delay with no jitter, so a fleet that lost its
broker at the same moment reconnects in lock-step. The transport computes each wait here and
hands it to paho as ``reconnect_delay_set(d, d)`` before paho waits.
"""

from __future__ import annotations

import random


class JitteredBackoff:
    """"Full jitter" backoff: the n-th wait is uniform in ``[base, min(cap, base * 2**n)]``.

    Args:
        base: the first (and smallest) wait, seconds.
        cap: the largest wait, seconds (``mqtt.reconnect_max_s``).
        rng: a random source (seeded in tests).
    """

    def __init__(self, base: float = 0.5, cap: float = 60.0,
                 rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The wait before the next attempt; each call widens the window up to ``cap``."""
        ceiling = min(self.cap, self.base * (2.0 ** min(self.attempt, 32)))
        self.attempt += 1
        return self._rng.uniform(self.base, ceiling)

    def reset(self) -> None:
        """Start again from ``base`` (after a successful connect)."""
        self.attempt = 0
