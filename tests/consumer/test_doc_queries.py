"""Every example query in docs/consumers.md runs on SQLite and PostgreSQL and answers."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_agent.consumer.messages import parse_event, parse_result
from edge_agent.consumer.store import SqlStore, Stored, iso_now, open_store
from tests.conftest import REPO

DOC = REPO / "docs" / "consumers.md"


def blocks(dialect: str) -> list[str]:
    found = re.findall(r"```sql\n-- (sqlite|postgresql|both)\n(.*?)```", DOC.read_text(), re.S)
    return [sql.strip().rstrip(";") for d, sql in found if d in (dialect, "both")]


def fill(store: SqlStore) -> None:
    items = []
    for seq in [*range(1, 30), *range(33, 40)]:  # 30..32 lost: one gap
        ts = f"2026-12-02T{10 + seq // 20:02d}:{seq % 60:02d}:00.000Z"
        dets = [{"label": "person", "class_id": 0, "score": 0.8, "track_id": 1 + seq // 10,
                 "box": [0.1, 0.1, 0.3, 0.6]}, {"label": "car", "class_id": 2, "score": 0.6}]
        items.append(Stored(parse_result(json.dumps({
            "id": uuid.uuid4().hex, "seq": seq, "boot_id": "b1", "device": "cam-1",
            "pipeline": "door", "ts": ts, "model": {"name": "m", "version": 1, "sha256": ""},
            "detections": dets, "counts": {"person": 1, "car": 1}}).encode()), iso_now()))
    items.append(Stored(parse_event(json.dumps({
        "id": uuid.uuid4().hex, "seq": 1, "boot_id": "b1", "device": "cam-1",
        "pipeline": "door", "ts": "2026-12-02T10:05:00.000Z", "event": "leave",
        "track_id": 2, "label": "person", "class_id": 0, "dwell_s": 12.5}).encode()),
        iso_now()))
    store.write(items)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_doc_queries_answer(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path}/r.sqlite" if dialect == "sqlite"
           else request.getfixturevalue("pg_url"))
    store = open_store(url)
    store.connect()
    try:
        fill(store)
        queries = blocks(dialect)
        assert len(queries) >= 6, queries
        conn: Any = store._open()
        for sql in queries:
            cur = conn.cursor()
            cur.execute(sql)
            rows = cur.fetchall()
            conn.commit()
            assert rows, f"no rows from:\n{sql}"
            if "FROM gaps" in sql:
                assert [tuple(r)[:5] for r in rows] == [("cam-1", "results", "door", 30, 32)]
            if "jsonb_array_elements" in sql or "json_each" in sql:
                labels = {r[1] for r in rows} | {r[4] for r in rows if len(r) > 4}
                assert "person" in labels, rows
    finally:
        store.close()
