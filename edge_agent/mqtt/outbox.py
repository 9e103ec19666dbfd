"""The durable outbox: results and events are written here before paho ever sees them.

SQLite in WAL mode at ``state_dir/outbox.sqlite``. One transaction per message allocates the
pipeline's next ``seq`` (gap-free, persistent across restarts), a unique ``id``, renders the
payload with both and stores it. A row is deleted only when the broker acknowledged it
(PUBACK for QoS 1, PUBCOMP for QoS 2).

Durability (``mqtt.outbox.synchronous``):

* ``normal`` (default): WAL with ``synchronous=NORMAL``. A committed message survives a crash
  of the process (kill -9) entirely, because the WAL is in the OS page cache. On power loss or
  a kernel crash the last commits since the previous WAL checkpoint's fsync may be lost; the
  database is never corrupted and ``seq`` stays consistent with what was kept (a subscriber
  may then see the counter continue from a lower value: the boot id tells it a restart
  happened).
* ``full``: ``synchronous=FULL``, one fsync per message; survives power loss too.

Group commit (``mqtt.outbox.commit_ms`` > 0): messages appended within that many ms share one
transaction (a savepoint each, so a failing one leaves the others), committed by the first
reader (:meth:`SqliteOutbox.pending`, the only way to paho) or writer of acknowledgements, or
at close. A message is therefore handed to the broker only once it is committed: at-least-once
is unchanged. What changes is the window after ``append`` returns: a crash within it loses the
uncommitted messages, which nobody has seen (their seqs are allocated again after the
restart); a failed commit loses the group, counted in ``store_failed`` and shown to
subscribers as a seq gap.

The bounds (``max_messages``, ``max_bytes``) drop the oldest rows first and count the drops in
a persisted counter.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import OutboxConfig
from edge_agent.errors import PublishError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    payload BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS seqs (pipeline TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

FILENAME = "outbox.sqlite"
AUTOCHECKPOINT_PAGES = 10_000  # ~40 MB of WAL
_ACK_CHUNK = 500  # rowids per DELETE (well under SQLite's limit of bound parameters)
# DELETE ... RETURNING needs SQLite 3.35 (2021); older system SQLite gets SELECT + DELETE
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored message.

    Attributes:
        rowid: position in the outbox (global order of appends).
        pipeline: the pipeline whose ``seq`` counter it used.
        seq: its sequence number in that pipeline.
        id: its unique id (stable across resends: the subscriber's dedupe key).
        topic: where it goes.
        qos: MQTT QoS it is published with.
        payload: the rendered bytes.
        sent: it may already have been handed to the broker once (a resend is a replay).
    """

    rowid: int
    pipeline: str
    seq: int
    id: str
    topic: str
    qos: int
    payload: bytes
    sent: bool


@dataclass(frozen=True, slots=True)
class Appended:
    """What :meth:`SqliteOutbox.append` allocated."""

    rowid: int
    seq: int
    id: str


class SqliteOutbox:
    """A bounded, persistent, thread-safe FIFO of rendered messages.

    One connection guarded by a lock: every operation is a short transaction, and SQLite
    serialises writers anyway.

    Args:
        path: the database file (its folder is created).
        config: bounds and durability.
    """

    def __init__(self, path: Path, config: OutboxConfig) -> None:
        self.path = Path(path)
        self.config = config
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={config.synchronous.upper()}")
        # Checkpoints (the only fsyncs under synchronous=NORMAL) run from checkpoint() on the
        # transport's pump thread, off the pipeline's path; this is only a safety net.
        self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        self._db.executescript(_SCHEMA)
        self._ckpt = sqlite3.connect(str(self.path), isolation_level=None,
                                     check_same_thread=False)
        self._ckpt_lock = threading.Lock()
        self._seqs: dict[str, int] = dict(self._db.execute("SELECT pipeline, next FROM seqs"))
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages")
        self._count, self._bytes = (int(v) for v in row.fetchone())
        found = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        self._dropped = int(found[0]) if found else 0
        self.store_failed = 0
        """Messages that could not be stored (disk full, I/O error) since open; each one a
        seq gap."""
        found = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
        self.rowid_at_open = int(found[0]) if found else 0
        """Rows up to this one were stored by an earlier process."""
        self._last_rowid = self.rowid_at_open
        self._group_s = config.commit_ms / 1000.0
        self._group_since: float | None = None  # monotonic time of the open group's 1st append
        self._group_n = 0  # messages in the open group
        self._closed = False
        if self._count:
            logger.info("outbox %s holds %d unacknowledged messages", self.path, self._count)

    # ------------------------------------------------------------------ writing

    def append(self, pipeline: str, topic: str, render: Callable[[int, str], bytes], qos: int,
               *, sent: bool = False) -> Appended:
        """Allocate ``seq`` and ``id``, render and store the message, in one transaction.

        If ``render`` raises, nothing is stored and the ``seq`` is not used (no gap).

        Args:
            pipeline: whose counter to use.
            topic: the destination topic.
            render: ``render(seq, id) -> bytes``, the payload.
            qos: QoS to publish with.
            sent: the caller hands it to the broker right after this returns (so a later resend
                is a replay). Set here to save a second transaction on the live path.

        Returns:
            the rowid, seq and id.
        """
        msg_id = uuid.uuid4().hex
        with self._lock:
            self._check_open()
            seq = self._seqs.get(pipeline, 0) + 1
            db = self._db
            grouped = self._group_s > 0
            if not db.in_transaction:
                db.execute("BEGIN IMMEDIATE")
                if grouped:
                    self._group_since = time.monotonic()
            if grouped:
                db.execute("SAVEPOINT append")
            try:
                payload = bytes(render(seq, msg_id))
                db.execute("INSERT INTO seqs(pipeline, next) VALUES(?, ?) ON CONFLICT(pipeline) "
                           "DO UPDATE SET next=excluded.next", (pipeline, seq))
                cur = db.execute(
                    "INSERT INTO messages(pipeline, seq, id, topic, qos, payload, sent) "
                    "VALUES(?, ?, ?, ?, ?, ?, ?)",
                    (pipeline, seq, msg_id, topic, qos, payload, int(sent)))
                rowid = int(cur.lastrowid or 0)
                dropped = self._enforce_bounds(len(payload))
                if grouped:
                    db.execute("RELEASE append")
                    self._group_n += 1
                else:
                    db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(grouped)
                # the message is lost: spend its seq anyway, so the next one stored shows the
                # gap to subscribers (DELIVERY.md: a gap is a loss) instead of hiding it
                self._seqs[pipeline] = seq
                self.store_failed += 1
                if self.store_failed == 1 or self.store_failed % 1000 == 0:
                    logger.error("outbox cannot store a message (%s): %d lost so far; each is "
                                 "a gap in seq", exc, self.store_failed)
                raise PublishError(f"outbox cannot store the message: {exc}") from None
            except BaseException:
                self._rollback(grouped)
                raise
            self._seqs[pipeline] = seq
            self._last_rowid = max(self._last_rowid, rowid)
            self._count += 1 - dropped[0]
            self._bytes += len(payload) - dropped[1]
            self._dropped += dropped[0]
        if dropped[0]:
            logger.warning("outbox full: dropped the %d oldest messages (%d dropped in total)",
                           dropped[0], self._dropped)
        return Appended(rowid, seq, msg_id)

    def _rollback(self, grouped: bool = False) -> None:
        """Undo the failed append: its savepoint in a group (the group's other messages
        stay), else its transaction."""
        db = self._db
        if grouped and db.in_transaction:
            try:
                db.execute("ROLLBACK TO append")
                db.execute("RELEASE append")
                return
            except sqlite3.Error:
                pass
        # SQLite may have rolled back already (disk full, I/O error)
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        if grouped:
            self._group_lost("the transaction was rolled back")

    def _group_lost(self, why: str) -> None:
        """The open group's messages are gone (their seqs stay spent: a visible gap)."""
        lost, self._group_n, self._group_since = self._group_n, 0, None
        if not lost:
            return
        self.store_failed += lost
        logger.error("outbox lost %d messages of a group commit (%s); each is a gap in seq",
                     lost, why)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages")
        self._count, self._bytes = (int(v) for v in row.fetchone())
        found = self._db.execute("SELECT value FROM counters WHERE name='dropped'").fetchone()
        self._dropped = int(found[0]) if found else 0

    def commit(self) -> None:
        """Commit the open group (group commit); nothing to do otherwise."""
        with self._lock:
            if not self._closed:
                self._commit_group()

    def _commit_group(self) -> None:
        """Commit the open group, under the lock."""
        if self._group_since is None:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._group_lost(f"commit failed: {exc}")
            return
        self._group_n, self._group_since = 0, None

    def group_wait(self) -> float:
        """Seconds until the open group is due for its commit (0: none open, or due now)."""
        since = self._group_since
        if since is None:
            return 0.0
        return max(0.0, since + self._group_s - time.monotonic())

    def _enforce_bounds(self, new_bytes: int) -> tuple[int, int]:
        """Delete the oldest rows while over a bound; inside the caller's transaction."""
        count = self._count + 1
        size = self._bytes + new_bytes
        cfg = self.config
        if count <= cfg.max_messages and size <= cfg.max_bytes:
            return 0, 0
        n = 0
        freed = 0
        last = 0
        # The newest row (just inserted) is never dropped, so a single oversized message is
        # still delivered.
        for rowid, length in self._db.execute(
                "SELECT rowid, LENGTH(payload) FROM messages ORDER BY rowid LIMIT ?",
                (max(count - 1, 0),)):
            if count - n <= cfg.max_messages and size - freed <= cfg.max_bytes:
                break
            n += 1
            freed += int(length)
            last = int(rowid)
        if n:
            self._db.execute("DELETE FROM messages WHERE rowid <= ?", (last,))
            self._db.execute("INSERT INTO counters(name, value) VALUES('dropped', ?) "
                             "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (n,))
        return n, freed

    def mark_sent(self, rowids: Iterable[int]) -> None:
        """Record that these rows are about to be handed to the broker (one transaction)."""
        ids = [(int(r),) for r in rowids]
        if not ids:
            return
        with self._lock:
            self._check_open()
            self._commit_group()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("UPDATE messages SET sent=1 WHERE rowid=?", ids)
            self._db.execute("COMMIT")

    def ack(self, rowids: int | Iterable[int]) -> int:
        """Delete acknowledged rows (one transaction); unknown rowids are ignored.

        One ``DELETE ... RETURNING`` per chunk of rows (a lone statement is its own
        transaction), instead of a SELECT and a DELETE per row.

        Returns:
            how many rows were deleted.
        """
        ids = [rowids] if isinstance(rowids, int) else [int(r) for r in rowids]
        if not ids:
            return 0
        with self._lock:
            if self._closed:
                return 0
            self._commit_group()
            db = self._db
            chunks = [ids[i:i + _ACK_CHUNK] for i in range(0, len(ids), _ACK_CHUNK)]
            if len(chunks) > 1:
                db.execute("BEGIN IMMEDIATE")
            try:
                freed = 0
                deleted = 0
                for chunk in chunks:
                    marks = ",".join("?" * len(chunk))
                    if _HAS_RETURNING:
                        rows = db.execute(
                            f"DELETE FROM messages WHERE rowid IN ({marks}) "  # noqa: S608
                            "RETURNING LENGTH(payload)", chunk).fetchall()
                    else:  # SQLite < 3.35 (e.g. Ubuntu 20.04 on Jetson): select, then delete
                        if not db.in_transaction:
                            db.execute("BEGIN IMMEDIATE")
                        rows = db.execute(
                            f"SELECT LENGTH(payload) FROM messages "  # noqa: S608
                            f"WHERE rowid IN ({marks})", chunk).fetchall()
                        db.execute(f"DELETE FROM messages WHERE rowid IN ({marks})",  # noqa: S608
                                   chunk)
                        if len(chunks) == 1:
                            db.execute("COMMIT")
                    for (length,) in rows:
                        freed += int(length)
                        deleted += 1
                if len(chunks) > 1:
                    db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._count -= deleted
            self._bytes -= freed
            return deleted

    # ------------------------------------------------------------------ reading

    def pending(self, after: int = 0, limit: int | None = None) -> list[OutboxMessage]:
        """Unacknowledged messages with rowid > ``after``, oldest first (an open group is
        committed first: only durable messages are handed out)."""
        with self._lock:
            self._check_open()
            self._commit_group()
            rows = self._db.execute(
                "SELECT rowid, pipeline, seq, id, topic, qos, payload, sent FROM messages "
                "WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, -1 if limit is None else limit))
            return [OutboxMessage(int(r[0]), r[1], int(r[2]), r[3], r[4], int(r[5]), bytes(r[6]),
                                  bool(r[7])) for r in rows]

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never blocks appends) on its own connection.

        Call it from a background thread about once a second; appends then never pay for the
        checkpoint's fsync.
        """
        with self._ckpt_lock:
            if self._closed:
                return
            try:
                self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                logger.debug("outbox checkpoint skipped: %s", exc)

    def last_seq(self, pipeline: str) -> int:
        """The last seq allocated for ``pipeline`` (0: none yet)."""
        with self._lock:
            return self._seqs.get(pipeline, 0)

    @property
    def last_rowid(self) -> int:
        """The highest rowid stored so far (by this process or an earlier one); no row after
        it exists, so a reader whose cursor is there has nothing new to read."""
        return self._last_rowid

    @property
    def depth(self) -> int:
        """Messages waiting for an acknowledgement."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Payload bytes waiting for an acknowledgement."""
        return self._bytes

    @property
    def dropped(self) -> int:
        """Messages dropped by the bounds, ever (persisted)."""
        return self._dropped

    def close(self) -> None:
        """Checkpoint and close the database; later calls raise, except ack (ignored)."""
        with self._lock, self._ckpt_lock:
            if self._closed:
                return
            self._commit_group()
            self._closed = True
            self._ckpt.close()
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("outbox checkpoint failed: %s", exc)
            self._db.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the outbox is closed")
