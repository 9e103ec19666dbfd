"""The collector's tables, for SQLite and PostgreSQL (docs/consumers.md explains each column).

``results`` and ``events`` are keyed on the message ``id``, so storing a copy twice is a no-op
and several collectors can write side by side. ``gaps`` holds the seq ranges missing *now*
between the lowest and highest seq stored per device, topic and pipeline (a late copy shrinks
or removes its gap); ``sessions`` one row per device boot and stream; ``streams`` the seq range
per stream (and the row each writer locks, so gap bookkeeping is serialised per stream);
``rejected`` what arrived but is not a message of the contract.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

_COMMON = """
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    boot_id TEXT,
    seq BIGINT NOT NULL,
    ts {ts} NOT NULL,
    replayed BOOLEAN NOT NULL,
    received_at {ts} NOT NULL,
    stored_at {ts} NOT NULL,
"""

_TABLES = """
CREATE TABLE IF NOT EXISTS results ({common}
    model TEXT,
    detections INTEGER NOT NULL,
    payload {json} NOT NULL
);
CREATE INDEX IF NOT EXISTS results_stream ON results (device, pipeline, seq);
CREATE INDEX IF NOT EXISTS results_ts ON results (ts);
CREATE TABLE IF NOT EXISTS events ({common}
    event TEXT NOT NULL,
    label TEXT,
    track_id BIGINT,
    dwell_s DOUBLE PRECISION,
    zone TEXT,
    payload {json} NOT NULL
);
CREATE INDEX IF NOT EXISTS events_stream ON events (device, pipeline, seq);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE TABLE IF NOT EXISTS gaps (
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    found_at {ts} NOT NULL,
    PRIMARY KEY (device, kind, pipeline, first_seq)
);
CREATE TABLE IF NOT EXISTS sessions (
    device TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    first_seen {ts} NOT NULL,
    last_seen {ts} NOT NULL,
    messages BIGINT NOT NULL,
    PRIMARY KEY (device, boot_id, kind, pipeline)
);
CREATE TABLE IF NOT EXISTS streams (
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    min_seq BIGINT,
    max_seq BIGINT,
    PRIMARY KEY (device, kind, pipeline)
);
CREATE TABLE IF NOT EXISTS rejected (
    id {serial},
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload {blob} NOT NULL,
    received_at {ts} NOT NULL
);
CREATE TABLE IF NOT EXISTS collector_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def ddl(dialect: str) -> list[str]:
    """The CREATE statements for ``"sqlite"`` or ``"postgresql"``, one per list item.

    SQLite keeps times as ISO 8601 text (``2026-12-02T10:00:00.000Z``: sorts and compares
    as time, works with ``strftime``) and payloads as JSON text (``json_extract``);
    PostgreSQL uses ``timestamptz`` and ``jsonb``.
    """
    if dialect == "sqlite":
        kw = {"ts": "TEXT", "json": "TEXT", "blob": "BLOB",
              "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}
    else:
        kw = {"ts": "TIMESTAMPTZ", "json": "JSONB", "blob": "BYTEA",
              "serial": "BIGSERIAL PRIMARY KEY"}
    text = _TABLES.format(common=_COMMON.format(ts=kw["ts"]).rstrip(), **kw)
    return [s.strip() for s in text.split(";") if s.strip()]
