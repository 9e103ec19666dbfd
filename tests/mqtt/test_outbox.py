"""The SQLite outbox: gap-free persistent seq, order, acks, bounds, durability settings."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent.config import OutboxConfig
from edge_agent.mqtt.outbox import SqliteOutbox


def render(seq: int, msg_id: str) -> bytes:
    return json.dumps({"seq": seq, "id": msg_id}).encode()


def test_seq_is_gap_free_per_pipeline_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = SqliteOutbox(path, OutboxConfig())
    seqs = [box.append("a", "t/a", render, 1).seq for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert box.append("b", "t/b", render, 1).seq == 1
    box.close()
    box = SqliteOutbox(path, OutboxConfig())
    assert box.append("a", "t/a", render, 1).seq == 4
    assert box.depth == 5
    assert [(m.pipeline, m.seq) for m in box.pending()] == [
        ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("a", 4)]
    box.close()


def test_payload_holds_the_allocated_seq_and_id(tmp_path: Path) -> None:
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig())
    appended = box.append("a", "t", render, 1)
    (msg,) = box.pending()
    assert json.loads(msg.payload) == {"seq": appended.seq, "id": appended.id}
    assert msg.id == appended.id and msg.rowid == appended.rowid and not msg.sent
    box.close()


def test_failed_render_stores_nothing_and_leaves_no_gap(tmp_path: Path) -> None:
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig())
    box.append("a", "t", render, 1)

    def broken(seq: int, msg_id: str) -> bytes:
        raise ValueError("policy refused")

    with pytest.raises(ValueError):
        box.append("a", "t", broken, 1)
    assert box.append("a", "t", render, 1).seq == 2
    assert box.depth == 2
    box.close()


def test_ack_deletes_and_mark_sent_persists(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(path, OutboxConfig())
    rows = [box.append("a", "t", render, 1) for _ in range(4)]
    box.mark_sent([rows[1].rowid])
    assert box.ack(rows[0].rowid) == 1
    assert box.ack([rows[0].rowid, 999]) == 0
    box.close()
    box = SqliteOutbox(path, OutboxConfig())
    pending = box.pending()
    assert [m.seq for m in pending] == [2, 3, 4]
    assert [m.sent for m in pending] == [True, False, False]
    assert [m.seq for m in box.pending(after=pending[0].rowid, limit=1)] == [3]
    assert box.depth == 3
    box.close()


def test_bounds_drop_oldest_and_count_persistently(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(path, OutboxConfig(max_messages=5))
    for _ in range(8):
        box.append("a", "t", render, 1)
    assert box.depth == 5
    assert box.dropped == 3
    assert [m.seq for m in box.pending()] == [4, 5, 6, 7, 8]
    box.close()
    box = SqliteOutbox(path, OutboxConfig(max_messages=5))
    assert box.dropped == 3
    box.close()


def test_byte_bound_keeps_the_newest(tmp_path: Path) -> None:
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig(max_bytes=100))

    def big(seq: int, msg_id: str) -> bytes:
        return b"x" * 40

    for _ in range(5):
        box.append("a", "t", big, 1)
    assert box.size_bytes <= 100 and box.depth == 2 and box.dropped == 3
    box.append("a", "t", lambda s, i: b"y" * 500, 1)  # larger than the bound: still kept
    assert [m.payload[:1] for m in box.pending()] == [b"y"]
    box.close()


@pytest.mark.parametrize(("setting", "expected"), [("normal", 1), ("full", 2)])
def test_wal_and_synchronous_setting(tmp_path: Path, setting: str, expected: int) -> None:
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig(synchronous=setting))  # type: ignore[arg-type]
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert box._db.execute("PRAGMA synchronous").fetchone()[0] == expected
    box.close()


def test_concurrent_appends_give_unique_contiguous_seqs(tmp_path: Path) -> None:
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig())
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(200):
            seq = box.append("a", "t", render, 1).seq
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 801))
    ids = {m.id for m in box.pending()}
    assert len(ids) == 800
    box.close()
    with sqlite3.connect(tmp_path / "o.sqlite") as db:
        assert db.execute("SELECT next FROM seqs WHERE pipeline='a'").fetchone()[0] == 800


@pytest.mark.parametrize("returning", [True, False], ids=["returning", "sqlite-before-3.35"])
def test_ack_of_many_rows_deletes_them_all_and_keeps_the_counts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, returning: bool) -> None:
    from edge_agent.mqtt import outbox

    monkeypatch.setattr(outbox, "_HAS_RETURNING", returning and outbox._HAS_RETURNING)
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig())
    assert box.last_rowid == 0
    single = box.append("a", "t", render, 1)
    assert box.ack(single.rowid) == 1 and box.depth == 0
    rows = [box.append("a", "t", render, 1) for _ in range(1203)]
    assert box.last_rowid == rows[-1].rowid
    size = box.size_bytes
    assert box.ack([r.rowid for r in rows[:1200]] + [rows[0].rowid, 10**9]) == 1200
    assert box.depth == 3
    assert box.size_bytes == sum(len(m.payload) for m in box.pending()) < size
    assert [m.seq for m in box.pending()] == [1202, 1203, 1204]
    box.close()
    box = SqliteOutbox(tmp_path / "o.sqlite", OutboxConfig())
    assert box.last_rowid == rows[-1].rowid and box.depth == 3
    box.close()


def test_a_full_disk_loses_the_message_but_shows_the_gap(tmp_path: Path, caplog) -> None:
    """SQLite's max_page_count makes the database full exactly as a full disk does (SQLITE_FULL);
    the chaos run's disk_full fault is the real thing."""
    from edge_agent.errors import PublishError

    box = SqliteOutbox(tmp_path / "outbox.sqlite", OutboxConfig())
    assert box.append("a", "t/a", render, 1).seq == 1
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")
    big = b"x" * 200_000

    def render_big(seq: int, msg_id: str) -> bytes:
        return render(seq, msg_id) + big

    lost = 0
    with pytest.raises(PublishError, match="disk is full"):
        for _ in range(100):
            box.append("a", "t/a", render_big, 1)
            lost += 1  # never reached when the first append fails
    assert lost == 0 and box.store_failed == 1
    box._db.execute("PRAGMA max_page_count = 1073741823")
    assert box.append("a", "t/a", render, 1).seq == 3  # seq 2 was lost: subscribers see it
    assert [m.seq for m in box.pending()] == [1, 3]
    assert box.depth == 2
    assert any("cannot store" in r.getMessage() for r in caplog.records)
    box.close()


def _committed(path: Path) -> list[int]:
    """The seqs another connection sees: what a crash would leave."""
    other = sqlite3.connect(str(path))
    try:
        return [int(r[0]) for r in other.execute("SELECT seq FROM messages ORDER BY rowid")]
    finally:
        other.close()


def test_group_commit_hands_out_only_committed_messages(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(path, OutboxConfig(commit_ms=50))
    for _ in range(4):
        box.append("a", "t", render, 1, sent=True)
    assert box.depth == 4 and box.group_wait() > 0
    assert _committed(path) == []  # one open transaction: not durable yet
    # pending(), the only way to paho, commits the group before it reads
    assert [m.seq for m in box.pending()] == [1, 2, 3, 4]
    assert _committed(path) == [1, 2, 3, 4] and box.group_wait() == 0
    box.append("a", "t", render, 1)
    box.commit()
    assert _committed(path) == [1, 2, 3, 4, 5]
    box.append("a", "t", render, 1)
    box.close()  # close commits the open group
    box = SqliteOutbox(path, OutboxConfig(commit_ms=50))
    assert [m.seq for m in box.pending()] == [1, 2, 3, 4, 5, 6]
    box.close()


def test_group_commit_a_failed_render_leaves_the_rest_of_the_group(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(path, OutboxConfig(commit_ms=50))
    box.append("a", "t", render, 1)

    def broken(seq: int, msg_id: str) -> bytes:
        raise ValueError("policy refused")

    with pytest.raises(ValueError):
        box.append("a", "t", broken, 1)
    box.append("a", "t", render, 1)
    box.ack([])  # nothing to ack: no commit needed
    assert box.store_failed == 0
    assert [m.seq for m in box.pending()] == [1, 2]  # no gap: the failed one used no seq
    assert _committed(path) == [1, 2]
    box.close()


def test_group_commit_ack_and_mark_sent_commit_the_group_first(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(path, OutboxConfig(commit_ms=50))
    first = box.append("a", "t", render, 1)
    box.append("a", "t", render, 1)
    box.mark_sent([first.rowid])
    assert _committed(path) == [1, 2]
    box.append("a", "t", render, 1)
    assert box.ack([first.rowid]) == 1
    assert _committed(path) == [2, 3] and box.depth == 2
    box.close()


def test_group_commit_a_failed_commit_loses_the_group_and_shows_the_gap(
        tmp_path: Path, caplog) -> None:
    path = tmp_path / "o.sqlite"
    box = SqliteOutbox(path, OutboxConfig(commit_ms=50))
    box.append("a", "t", render, 1)
    box.commit()
    box.append("a", "t", render, 1)
    box.append("a", "t", render, 1)
    # the transaction is gone under the group (as after an I/O error): its COMMIT fails
    box._db.execute("ROLLBACK")
    box.commit()
    assert box.store_failed == 2
    assert box.depth == 1
    assert box.append("a", "t", render, 1).seq == 4  # seqs 2 and 3 were lost: a visible gap
    assert [m.seq for m in box.pending()] == [1, 4]
    assert any("lost 2 messages" in r.getMessage() for r in caplog.records)
    box.close()
