"""Where the collector writes: SQLite (embedded default) or PostgreSQL, one batch per transaction.

A batch is written in one transaction:

1. insert results and events in id order, ``ON CONFLICT (id) DO NOTHING``: a copy stored
   before is a no-op, which keeps several collectors exactly-once together;
2. lock the rows of the streams it touches in ``streams`` (sorted, so two writers never
   deadlock; SQLite takes its single write lock with ``BEGIN IMMEDIATE`` at the start);
3. for what was new: extend ``sessions``, and bring ``gaps`` up to date by looking at which
   seqs the table now holds in the ranges that changed (new highs, new lows, open gaps the
   batch may have filled);
4. store payloads that are not messages in ``rejected``; commit.

Only after the commit does the collector acknowledge the batch to the broker.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.consumer.messages import Event, Result
from edge_agent.consumer.schema import SCHEMA_VERSION, ddl
from edge_agent.errors import ConfigError, EdgeAgentError, PluginUnavailableError

StreamKey = tuple[str, str, str]  # (device, kind, pipeline)


class StoreUnavailableError(EdgeAgentError):
    """The database cannot be reached or refused the write (retry later; nothing was kept)."""


def _one_line(exc: BaseException) -> str:
    """A driver's (often multi-line) error message on one line."""
    return " ".join(str(exc).split())


def iso_now() -> str:
    """The current time as ISO 8601 UTC with milliseconds (the contract's ``ts`` format)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class Stored:
    """One message to store, with the time it arrived at the collector."""

    message: Result | Event
    received_at: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A payload that is not a message of the contract, kept for inspection."""

    topic: str
    reason: str
    payload: bytes
    received_at: str


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a batch did: rows new in the database, copies that were there already."""

    stored: int
    duplicates: int
    rejected: int


def missing_ranges(present: Sequence[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """The ranges of ``lo..hi`` not in ``present`` (sorted ascending, may hold repeats)."""
    out: list[tuple[int, int]] = []
    nxt = lo
    for s in present:
        if s < nxt:
            continue
        if s > hi:
            break
        if s > nxt:
            out.append((nxt, s - 1))
        nxt = s + 1
    if nxt <= hi:
        out.append((nxt, hi))
    return out


_RESULT_COLS = ("id", "device", "pipeline", "boot_id", "seq", "ts", "replayed", "received_at",
                "stored_at", "model", "detections", "payload")
_EVENT_COLS = ("id", "device", "pipeline", "boot_id", "seq", "ts", "replayed", "received_at",
               "stored_at", "event", "label", "track_id", "dwell_s", "zone", "payload")
_LOCK_STREAM = {
    "sqlite": "SELECT min_seq, max_seq FROM streams WHERE device = ? AND kind = ? AND "
              "pipeline = ?",
    "postgresql": "SELECT min_seq, max_seq FROM streams WHERE device = %s AND kind = %s AND "
                  "pipeline = %s FOR UPDATE",
}
_SESSION_SQL = (
    "INSERT INTO sessions (device, boot_id, kind, pipeline, first_seq, last_seq, first_seen, "
    "last_seen, messages) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device, boot_id, kind, pipeline) DO UPDATE SET "
    "first_seq = LEAST(sessions.first_seq, excluded.first_seq), "
    "last_seq = GREATEST(sessions.last_seq, excluded.last_seq), "
    "first_seen = LEAST(sessions.first_seen, excluded.first_seen), "
    "last_seen = GREATEST(sessions.last_seen, excluded.last_seen), "
    "messages = sessions.messages + excluded.messages")
_UPSERT_SESSION = {  # SQLite's two-argument MIN and MAX are PostgreSQL's LEAST and GREATEST
    "sqlite": _SESSION_SQL.replace("LEAST", "MIN").replace("GREATEST", "MAX"),
    "postgresql": _SESSION_SQL.replace("?", "%s"),
}
_PG_TYPES = {"seq": "bigint", "replayed": "boolean", "detections": "integer",
             "track_id": "bigint", "dwell_s": "double precision", "ts": "timestamptz",
             "received_at": "timestamptz", "stored_at": "timestamptz", "payload": "jsonb"}


def _row(item: Stored, stored_at: str) -> tuple[Any, ...]:
    m = item.message
    head = (m.id, m.device, m.pipeline, m.boot_id, m.seq, m.ts, m.replayed, item.received_at,
            stored_at)
    body = json.dumps(dict(m.raw), separators=(",", ":"), ensure_ascii=False)
    if isinstance(m, Result):
        return (*head, m.model or None, len(m.detections), body)
    return (*head, m.event, m.label, m.track_id, m.dwell_s, m.zone, body)


class SqlStore:
    """The batch writer over a DB-API connection; :func:`open_store` makes one from a URL.

    Args:
        url: the database URL (for messages).
        dialect: ``"sqlite"`` or ``"postgresql"``.
        connect: opens a new connection (called again after an outage).
    """

    def __init__(self, url: str, dialect: str, connect: Any) -> None:
        self.url = url
        self.dialect = dialect
        self._connect = connect
        self._conn: Any = None
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if dialect == "postgresql":
            # imported here: optional extra (edge-agent[collector]); absent on devices
            import psycopg

            self._errors = (psycopg.Error,)

    # ------------------------------------------------------------------ connection

    def _sql(self, text: str) -> str:
        return text if self.dialect == "sqlite" else text.replace("?", "%s")

    def _open(self) -> Any:
        if self._conn is None:
            conn = self._connect()
            try:
                cur = conn.cursor()
                if self.dialect == "postgresql":
                    # collectors starting together: CREATE TABLE IF NOT EXISTS is not safe
                    # against a concurrent one in PostgreSQL (duplicate pg_type key)
                    cur.execute("SELECT pg_advisory_xact_lock(7262070)")
                for stmt in ddl(self.dialect):
                    cur.execute(stmt)
                cur.execute(self._sql("INSERT INTO collector_meta (key, value) VALUES (?, ?) "
                                      "ON CONFLICT (key) DO NOTHING"),
                            ("schema_version", str(SCHEMA_VERSION)))
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def connect(self) -> None:
        """Open the connection and create the tables if needed.

        Raises:
            StoreUnavailableError: the database cannot be reached.
        """
        try:
            self._open()
        except self._errors as exc:
            raise StoreUnavailableError(f"{self.url}: {_one_line(exc)}") from None

    def close(self) -> None:
        """Close the connection (the next write opens a new one)."""
        if self._conn is not None:
            with contextlib.suppress(*self._errors):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ writing

    def write(self, items: Sequence[Stored], rejected: Sequence[Rejected] = ()) -> WriteOutcome:
        """Store one batch in one transaction.

        Raises:
            StoreUnavailableError: the transaction failed and was rolled back (the connection
                is closed; the next call reconnects). Nothing of the batch is stored.
        """
        try:
            conn = self._open()
            cur = conn.cursor()
            if self.dialect == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            out = self._write(cur, items, rejected)
            conn.commit()
            return out
        except self._errors as exc:
            if self._conn is not None:
                with contextlib.suppress(*self._errors):
                    self._conn.rollback()
            self.close()
            raise StoreUnavailableError(f"{self.url}: {_one_line(exc)}") from None

    def _write(self, cur: Any, items: Sequence[Stored],
               rejected: Sequence[Rejected]) -> WriteOutcome:
        stored_at = iso_now()
        # one copy per id within the batch (the broker may deliver a copy twice in a burst)
        unique = list({s.message.id: s for s in items}.values())
        keys: list[StreamKey] = sorted(
            {(s.message.device, str(s.message.kind), s.message.pipeline) for s in unique})
        new: list[Result | Event] = []
        for kind, cols in (("results", _RESULT_COLS), ("events", _EVENT_COLS)):
            # in id order: two writers inserting copies of the same ids wait for each other
            # in one order, never in a cycle
            rows = sorted(_row(s, stored_at) for s in unique if s.message.kind == kind)
            if rows:
                fresh = self._insert(cur, kind, cols, rows)
                new += [s.message for s in unique if s.message.id in fresh]
        # Lock the streams only now, so concurrent writers insert in parallel and take turns
        # just for the bookkeeping. Whoever holds a stream's lock sees every row committed by
        # earlier holders; rows of a writer still inserting are seen by that writer's own
        # bookkeeping later (it fills the gaps this one records for them).
        bounds = {k: self._lock_stream(cur, k) for k in keys}
        by_stream: dict[StreamKey, list[int]] = collections.defaultdict(list)
        for m in new:
            by_stream[(m.device, m.kind, m.pipeline)].append(m.seq)
        for key, seqs in by_stream.items():
            self._update_gaps(cur, key, bounds[key], sorted(set(seqs)), stored_at)
        self._update_sessions(cur, new)
        for r in rejected:
            cur.execute(self._sql("INSERT INTO rejected (topic, reason, payload, received_at) "
                                  "VALUES (?, ?, ?, ?)"),
                        (r.topic, r.reason, r.payload, r.received_at))
        return WriteOutcome(len(new), len(items) - len(new), len(rejected))

    def _lock_stream(self, cur: Any, key: StreamKey) -> tuple[int | None, int | None]:
        cur.execute(self._sql("INSERT INTO streams (device, kind, pipeline) VALUES (?, ?, ?) "
                              "ON CONFLICT (device, kind, pipeline) DO NOTHING"), key)
        cur.execute(_LOCK_STREAM[self.dialect], key)
        lo, hi = cur.fetchone()
        return lo, hi

    def _insert(self, cur: Any, kind: str, cols: tuple[str, ...],
                rows: list[tuple[Any, ...]]) -> set[str]:
        names = ", ".join(cols)
        if self.dialect == "sqlite":
            fresh: set[str] = set()
            sql = (f"INSERT INTO {kind} ({names}) VALUES ({', '.join('?' * len(cols))}) "  # noqa: S608
                   "ON CONFLICT (id) DO NOTHING")
            for row in rows:
                cur.execute(sql, row)
                if cur.rowcount == 1:
                    fresh.add(row[0])
            return fresh
        # PostgreSQL: the whole batch in one statement, one round trip
        arrays = [f"%s::{_PG_TYPES.get(c, 'text')}[]" for c in cols]
        sql = (f"INSERT INTO {kind} ({names}) SELECT * FROM unnest({', '.join(arrays)}) "  # noqa: S608
               "ON CONFLICT (id) DO NOTHING RETURNING id")
        columns = [list(col) for col in zip(*rows, strict=True)]
        cur.execute(sql, columns)
        return {r[0] for r in cur.fetchall()}

    def _present(self, cur: Any, key: StreamKey, lo: int, hi: int) -> list[int]:
        device, kind, pipeline = key
        cur.execute(self._sql(f"SELECT DISTINCT seq FROM {kind} WHERE device = ? AND "  # noqa: S608
                              "pipeline = ? AND seq BETWEEN ? AND ? ORDER BY seq"),
                    (device, pipeline, lo, hi))
        return [int(r[0]) for r in cur.fetchall()]

    def _add_gaps(self, cur: Any, key: StreamKey, ranges: list[tuple[int, int]],
                  now: str) -> None:
        for a, b in ranges:
            cur.execute(self._sql("INSERT INTO gaps (device, kind, pipeline, first_seq, "
                                  "last_seq, found_at) VALUES (?, ?, ?, ?, ?, ?) "
                                  "ON CONFLICT (device, kind, pipeline, first_seq) DO UPDATE "
                                  "SET last_seq = excluded.last_seq"), (*key, a, b, now))

    def _update_gaps(self, cur: Any, key: StreamKey, bounds: tuple[int | None, int | None],
                     seqs: list[int], now: str) -> None:
        old_lo, old_hi = bounds
        lo, hi = seqs[0], seqs[-1]
        if old_lo is None or old_hi is None:
            self._add_gaps(cur, key, missing_ranges(self._present(cur, key, lo, hi), lo, hi),
                           now)
            new_lo, new_hi = lo, hi
        else:
            if hi > old_hi:
                a = old_hi + 1
                self._add_gaps(cur, key, missing_ranges(self._present(cur, key, a, hi), a, hi),
                               now)
            if lo < old_lo:
                b = old_lo - 1
                self._add_gaps(cur, key, missing_ranges(self._present(cur, key, lo, b), lo, b),
                               now)
            inside = [s for s in seqs if old_lo <= s <= old_hi]
            if inside:
                self._fill_gaps(cur, key, inside, now)
            new_lo, new_hi = min(lo, old_lo), max(hi, old_hi)
        cur.execute(self._sql("UPDATE streams SET min_seq = ?, max_seq = ? WHERE device = ? "
                              "AND kind = ? AND pipeline = ?"), (new_lo, new_hi, *key))

    def _fill_gaps(self, cur: Any, key: StreamKey, inside: list[int], now: str) -> None:
        cur.execute(self._sql("SELECT first_seq, last_seq FROM gaps WHERE device = ? AND "
                              "kind = ? AND pipeline = ? AND last_seq >= ? AND first_seq <= ?"),
                    (*key, inside[0], inside[-1]))
        gaps = [(int(a), int(b)) for a, b in cur.fetchall()]
        for a, b in gaps:
            if not any(a <= s <= b for s in inside):
                continue
            cur.execute(self._sql("DELETE FROM gaps WHERE device = ? AND kind = ? AND "
                                  "pipeline = ? AND first_seq = ?"), (*key, a))
            self._add_gaps(cur, key, missing_ranges(self._present(cur, key, a, b), a, b), now)

    def _update_sessions(self, cur: Any, new: list[Result | Event]) -> None:
        agg: dict[tuple[str, str, str, str], list[Any]] = {}
        k: tuple[str, str, str, str]
        for m in new:
            k = (m.device, m.boot_id or "", m.kind, m.pipeline)
            a = agg.get(k)
            if a is None:
                agg[k] = [m.seq, m.seq, m.ts, m.ts, 1]
            else:
                a[0], a[1] = min(a[0], m.seq), max(a[1], m.seq)
                a[2], a[3] = min(a[2], m.ts), max(a[3], m.ts)
                a[4] += 1
        sql = _UPSERT_SESSION[self.dialect]
        for k in sorted(agg):
            cur.execute(sql, (*k, *agg[k]))


_SQLITE_BUSY_S = 30.0


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting for other connections as long as any statement would.

    SQLite answers ``PRAGMA journal_mode=WAL`` with "database is locked" at once, without
    calling the busy handler, while another connection opens or converts the same new file
    (two collectors starting together: 12 of 300 three-way starts failed here).
    """
    deadline = time.monotonic() + _SQLITE_BUSY_S
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def open_store(url: str) -> SqlStore:
    """A store for ``sqlite:///PATH`` or ``postgresql://...`` (not yet connected).

    Raises:
        ConfigError: an unknown scheme or an SQLite path whose folder does not exist.
        PluginUnavailableError: PostgreSQL without the ``[collector]`` extra (psycopg).
    """
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise ConfigError(f"--db {url}: folder {path.parent} does not exist")

        def connect_sqlite() -> sqlite3.Connection:
            conn = sqlite3.connect(path, timeout=_SQLITE_BUSY_S, isolation_level=None,
                                   check_same_thread=False)
            try:
                _set_wal(conn)
                conn.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                conn.close()
                raise
            return conn

        return SqlStore(url, "sqlite", connect_sqlite)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            # imported here: optional extra (edge-agent[collector]); absent on devices
            import psycopg
        except ImportError:
            raise PluginUnavailableError(
                "--db postgresql://... needs psycopg: pip install 'edge-agent[collector]'"
            ) from None

        def connect_pg() -> Any:
            return psycopg.connect(url, connect_timeout=10)

        return SqlStore(url, "postgresql", connect_pg)
    raise ConfigError(f"--db {url}: expected sqlite:///PATH or postgresql://...")
