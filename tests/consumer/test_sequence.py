"""Dedupe window and seq tracking: restart vs loss, late fills, rewinds."""

from __future__ import annotations

from edge_agent.consumer.sequence import Gap, GapFilled, IdWindow, Restart, Rewind, SeqTracker


def test_id_window_is_bounded_and_recognises_repeats() -> None:
    w = IdWindow(3)
    assert [w.seen(x) for x in "abca"] == [False, False, False, True]
    w.seen("d")  # evicts b (a was refreshed)
    assert len(w) == 3
    assert w.seen("a") and not w.seen("b")


def test_contiguous_stream_reports_nothing() -> None:
    t = SeqTracker()
    assert all(t.observe("d", "results", "cam", s, "b1") == [] for s in range(5, 50))
    assert t.last_seq("d", "results", "cam") == 49


def test_gap_then_late_fill() -> None:
    t = SeqTracker()
    t.observe("d", "results", "cam", 1, "b1")
    assert t.observe("d", "results", "cam", 5, "b1") == [Gap("d", "results", "cam", 2, 4)]
    assert t.observe("d", "results", "cam", 3, "b1") == [GapFilled("d", "results", "cam", 3)]
    assert t.open_gaps() == [Gap("d", "results", "cam", 2, 2), Gap("d", "results", "cam", 4, 4)]
    t.observe("d", "results", "cam", 2, "b1")
    t.observe("d", "results", "cam", 4, "b1")
    assert t.open_gaps() == []


def test_restart_without_loss_is_not_a_gap() -> None:
    t = SeqTracker()
    t.observe("d", "results", "cam", 10, "b1")
    reports = t.observe("d", "results", "cam", 11, "b2")
    assert reports == [Restart("d", "results", "cam", "b2", "b1", 11, 0)]
    # a replayed copy of the old boot's message after the restart is no new restart
    assert t.observe("d", "results", "cam", 12, "b1") == []


def test_restart_with_loss_is_a_gap_at_restart() -> None:
    t = SeqTracker()
    t.observe("d", "results", "cam", 10, "b1")
    reports = t.observe("d", "results", "cam", 14, "b2")
    assert reports == [Restart("d", "results", "cam", "b2", "b1", 14, 3),
                       Gap("d", "results", "cam", 11, 13, at_restart=True)]


def test_rewind_after_power_loss() -> None:
    t = SeqTracker()
    t.observe("d", "results", "cam", 10, "b1")
    assert t.observe("d", "results", "cam", 8, "b2") == [Rewind("d", "results", "cam", "b2", 8, 10)]
    assert t.observe("d", "results", "cam", 9, "b2") == []  # continues from the rewound seq
    # an old seq of a known boot that is no gap (a copy older than the id window): silent
    assert t.observe("d", "results", "cam", 3, "b1") == []


def test_streams_are_independent() -> None:
    t = SeqTracker()
    t.observe("d", "results", "cam", 1, "b")
    t.observe("d", "events", "cam", 1, "b")
    t.observe("e", "results", "cam", 7, "c")
    assert t.observe("d", "results", "cam", 2, "b") == []
    assert t.observe("d", "events", "cam", 3, "b") == [Gap("d", "events", "cam", 2, 2)]


def test_open_gaps_are_bounded() -> None:
    t = SeqTracker(max_open_gaps=2)
    for s in range(1, 20, 2):
        t.observe("d", "results", "cam", s, "b")
    assert len(t.open_gaps()) == 2
