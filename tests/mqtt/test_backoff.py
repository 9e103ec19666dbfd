"""Jittered exponential reconnect backoff."""

from __future__ import annotations

import random

import pytest

from edge_agent.mqtt.backoff import JitteredBackoff


def test_waits_grow_with_jitter_up_to_the_cap() -> None:
    b = JitteredBackoff(base=0.5, cap=60.0, rng=random.Random(1))
    waits = [b.next() for _ in range(12)]
    assert all(0.5 <= w <= 60.0 for w in waits)
    assert waits[0] == 0.5  # the first window is [base, base]
    ceilings = [min(60.0, 0.5 * 2**n) for n in range(12)]
    assert all(w <= c for w, c in zip(waits, ceilings, strict=True))
    assert len({round(w, 6) for w in waits[3:]}) == len(waits[3:])  # jittered, not lock-step
    b.reset()
    assert b.next() == 0.5


def test_two_devices_do_not_wait_in_lock_step() -> None:
    a = JitteredBackoff(rng=random.Random(1))
    b = JitteredBackoff(rng=random.Random(2))
    assert [a.next() for _ in range(8)][4:] != [b.next() for _ in range(8)][4:]


def test_bad_bounds() -> None:
    with pytest.raises(ValueError):
        JitteredBackoff(base=2, cap=1)
