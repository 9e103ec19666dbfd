"""The collector's store on SQLite and a real PostgreSQL: idempotent on id, gaps kept exact
as seqs arrive in any order, sessions per boot."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.consumer.messages import parse_event, parse_result
from edge_agent.consumer.store import (
    Rejected,
    SqlStore,
    Stored,
    StoreUnavailableError,
    iso_now,
    missing_ranges,
    open_store,
)
from edge_agent.errors import ConfigError


def payload(seq: int, boot: str = "b1", device: str = "d1", mid: str | None = None,
            pipeline: str = "cam") -> bytes:
    return json.dumps({
        "schema": "edge-agent/result@1", "id": mid or uuid.uuid4().hex, "seq": seq,
        "boot_id": boot, "device": device, "pipeline": pipeline,
        "ts": f"2026-12-02T10:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z",
        "model": {"name": "m", "version": 1, "sha256": ""},
        "frame": {"index": seq, "width": 1, "height": 1}, "inference_ms": 1.0,
        "detections": [{"label": "person", "class_id": 0, "score": 0.5}],
        "counts": {"person": 1}}).encode()


def stored(seq: int, **kw: Any) -> Stored:
    return Stored(parse_result(payload(seq, **kw)), iso_now())


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SqlStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/results.sqlite"
    else:
        url = request.getfixturevalue("pg_url")
    s = open_store(url)
    s.connect()
    request.addfinalizer(s.close)
    return s


def query(store: SqlStore, sql: str) -> list[tuple[Any, ...]]:
    conn = store._open()
    cur = conn.cursor()
    cur.execute(sql)
    rows = [tuple(r) for r in cur.fetchall()]
    conn.commit()
    return rows


def gaps(store: SqlStore) -> list[tuple[Any, ...]]:
    return query(store, "SELECT device, kind, pipeline, first_seq, last_seq FROM gaps "
                        "ORDER BY device, kind, pipeline, first_seq")


def test_missing_ranges() -> None:
    assert missing_ranges([], 1, 3) == [(1, 3)]
    assert missing_ranges([1, 2, 2, 5, 9], 1, 8) == [(3, 4), (6, 8)]
    assert missing_ranges([0, 4, 10], 1, 5) == [(1, 3), (5, 5)]


def test_idempotent_on_id(store: SqlStore) -> None:
    batch = [stored(s) for s in range(1, 11)]
    assert store.write(batch).stored == 10
    again = store.write(batch[3:] + batch[:2])
    assert (again.stored, again.duplicates) == (0, 9)
    assert query(store, "SELECT count(*), min(seq), max(seq) FROM results") == [(10, 1, 10)]
    assert gaps(store) == []


def test_gaps_follow_arrivals_in_any_order(store: SqlStore) -> None:
    rng = random.Random(7)
    seqs = list(range(1, 201))
    lost = {17, 18, 19, 120}
    arrive = [s for s in seqs if s not in lost]
    rng.shuffle(arrive)
    for i in range(0, len(arrive), 23):  # batches in random order, like two collectors
        store.write([stored(s) for s in arrive[i:i + 23]])
    assert gaps(store) == [("d1", "results", "cam", 17, 19), ("d1", "results", "cam", 120, 120)]
    store.write([stored(18)])  # a late copy splits its gap
    assert gaps(store) == [("d1", "results", "cam", 17, 17), ("d1", "results", "cam", 19, 19),
                           ("d1", "results", "cam", 120, 120)]
    store.write([stored(17), stored(19), stored(120)])
    assert gaps(store) == []
    assert query(store, "SELECT min_seq, max_seq FROM streams") == [(1, 200)]


def test_sessions_per_boot_and_streams_apart(store: SqlStore) -> None:
    store.write([stored(s, boot="b1") for s in range(1, 6)]
                + [stored(s, boot="b2") for s in range(6, 9)]
                + [stored(s, device="d2") for s in (4, 6)])
    ev = Stored(parse_event(json.dumps({
        "id": "e1", "seq": 3, "boot_id": "b2", "device": "d1", "pipeline": "cam",
        "ts": "2026-12-02T10:00:09.000Z", "event": "leave", "track_id": 4, "label": "person",
        "class_id": 0, "dwell_s": 2.5}).encode()), iso_now())
    out = store.write([ev], [Rejected("edge-agent/d1/results/cam", "not JSON", b"\xff",
                                      iso_now())])
    assert (out.stored, out.rejected) == (1, 1)
    rows = query(store, "SELECT device, boot_id, kind, first_seq, last_seq, messages FROM "
                        "sessions ORDER BY device, kind, boot_id")
    assert rows == [("d1", "b2", "events", 3, 3, 1), ("d1", "b1", "results", 1, 5, 5),
                    ("d1", "b2", "results", 6, 8, 3), ("d2", "b1", "results", 4, 6, 2)]
    assert gaps(store) == [("d2", "results", "cam", 5, 5)]
    assert query(store, "SELECT event, track_id, dwell_s FROM events") == [("leave", 4, 2.5)]
    assert query(store, "SELECT count(*) FROM rejected") == [(1,)]


def test_bad_urls_are_clear() -> None:
    with pytest.raises(ConfigError, match="expected sqlite"):
        open_store("mysql://x")
    with pytest.raises(ConfigError, match="does not exist"):
        open_store("sqlite:////nonexistent/folder/x.sqlite")


def test_unreachable_postgres_is_unavailable_not_a_crash() -> None:
    pytest.importorskip("psycopg")
    from tests.broker import free_port

    s = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    with pytest.raises(StoreUnavailableError):
        s.write([stored(1)])


def test_concurrent_writers_keep_gaps_exact(request: pytest.FixtureRequest, tmp_path: Path,
                                            ) -> None:
    """Two stores (two collectors) write interleaved batches of the same streams at once,
    with some copies in both: every seq once, no gap left but the one really missing."""
    import threading

    for url in (f"sqlite:///{tmp_path}/c.sqlite", request.getfixturevalue("pg_url")):
        rng = random.Random(3)
        msgs = {(d, s): stored(s, device=d) for d in ("d1", "d2", "d3")
                for s in range(1, 401) if (d, s) != ("d2", 250)}
        items = list(msgs.values())
        rng.shuffle(items)
        halves = [items[0::2], items[1::2]]
        halves[1] += items[:40]  # copies both write
        rng.shuffle(halves[1])
        stores = [open_store(url), open_store(url)]
        errors: list[BaseException] = []

        def work(store: SqlStore, part: list[Stored], errors: list[BaseException]) -> None:
            try:
                for i in range(0, len(part), 25):
                    store.write(part[i:i + 25])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s, h, errors))
                   for s, h in zip(stores, halves, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert query(stores[0], "SELECT count(*), count(DISTINCT id) FROM results") == [
            (len(items), len(items))]
        assert gaps(stores[0]) == [("d2", "results", "cam", 250, 250)]
        for s in stores:
            s.close()


def test_collectors_starting_together_on_a_new_sqlite_file(tmp_path: Path) -> None:
    """SQLite answers the switch to WAL with "database is locked" at once, without waiting,
    while another connection converts the same new file: stores opening together must wait
    their turn instead (this failed 3 of 200 three-way starts before)."""
    import threading

    failures: list[BaseException] = []
    for i in range(60):
        stores = [open_store(f"sqlite:///{tmp_path}/c{i}.sqlite") for _ in range(4)]

        def connect(store: SqlStore) -> None:
            try:
                store.connect()
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=connect, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for s in stores:
            s.close()
    assert not failures, failures
