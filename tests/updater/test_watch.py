"""The watch verdict: early failure, end by count or time, no inferences, stop mid-watch."""

from __future__ import annotations

from edge_agent.config import UpdatesConfig
from edge_agent.updater.watch import ModelWatch


def _watch(**cfg: float) -> ModelWatch:
    return ModelWatch("a" * 64, {}, "r", UpdatesConfig(**cfg), started=100.0)


def test_fails_early_once_failures_exceed_the_ratio_of_the_limit() -> None:
    w = _watch(watch_inferences=10, watch_seconds=30, max_failure_ratio=0.2)
    for ok in (False, True, False):
        w.record(ok, True)
        assert not w.wake.is_set() and w.verdict(now=101) is None
    w.record(True, False)  # non-finite counts as a failure
    assert w.wake.is_set() and w.verdict(now=101) == "fail"
    assert w.reason().startswith("3 of 4 inferences failed")


def test_passes_at_the_limit_or_the_deadline() -> None:
    w = _watch(watch_inferences=5, watch_seconds=30, max_failure_ratio=0.2)
    for i in range(5):
        w.record(i != 0, True)
    assert w.verdict(now=101) == "pass"
    w = _watch(watch_inferences=50, watch_seconds=30, max_failure_ratio=0.2)
    # nothing ran: the watch does not pass on no evidence (issue 12); it goes on past
    # watch_seconds and fails at watch_max_seconds
    assert w.verdict(now=129) is None and w.verdict(now=130) is None
    assert w.verdict(now=699) is None and w.verdict(now=700) == "fail"
    assert "only 0 inferences" in w.reason()
    w.record(True, True)  # one good inference after the nominal end: it passes
    assert w.verdict(now=131) == "pass"
    w.record(False, True)
    w.record(True, True)
    assert w.failing_so_far() and w.verdict(now=131) == "fail"


def test_disabled_and_time_only() -> None:
    assert not _watch(watch_inferences=0, watch_seconds=0).enabled
    w = _watch(watch_inferences=0, watch_seconds=5, max_failure_ratio=0.5)
    for _ in range(100):
        w.record(True, True)
    assert w.verdict(now=104) is None and w.verdict(now=105) == "pass"
