"""The audit log: metadata only, size-rotated, thread-safe; the privacy-report command."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from edge_agent.commands.privacy_report import cmd_privacy_report
from edge_agent.config import AuditConfig
from edge_agent.privacy.audit import AUDIT_FILE, AuditLog, read_entries


def test_rotation_keeps_size_bounded(tmp_path: Path):
    log = AuditLog(tmp_path, AuditConfig(max_bytes=2000, backups=2))
    for i in range(200):
        log.record(topic=f"p/d/results/door{i % 3}", kind="result", size=100 + i,
                   pipeline="door")
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [AUDIT_FILE, f"{AUDIT_FILE}.1", f"{AUDIT_FILE}.2"]
    assert all((tmp_path / f).stat().st_size <= 2000 for f in files)
    entries = list(read_entries(tmp_path))
    assert entries[-1]["size"] == 299  # the newest survives, oldest first order
    assert [e["size"] for e in entries] == sorted(e["size"] for e in entries)


def test_concurrent_writers_never_interleave_lines(tmp_path: Path):
    log = AuditLog(tmp_path, AuditConfig(max_bytes=10_000_000))

    def write(n: int) -> None:
        for i in range(300):
            log.record(topic=f"t/{n}", kind="stats", size=i)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    lines = (tmp_path / AUDIT_FILE).read_text().splitlines()
    assert len(lines) == 1200 and all(json.loads(line)["kind"] == "stats" for line in lines)


def test_disabled_log_writes_nothing(tmp_path: Path):
    log = AuditLog(tmp_path / "a", AuditConfig(enabled=False))
    log.record(topic="t", kind="stats", size=1)
    assert not (tmp_path / "a").exists()


def test_privacy_report(tmp_path: Path, capsys):
    state = tmp_path / "state"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device_id: dev\nstate_dir: {state}\npipelines:\n  - name: door\n"
                   "    source: {type: synthetic}\n    model: {path: m.tflite}\n")
    log = AuditLog(state / "audit")
    log.record(topic="p/dev/results/door", kind="result", size=300, pipeline="door")
    log.record(topic="p/dev/results/door", kind="result", size=200, pipeline="door")
    log.record(topic="p/dev/status", kind="status", size=120)
    log.record(topic="", kind="result", size=0, pipeline="door", outcome="refused",
               reason="schema")
    log.close()
    assert cmd_privacy_report(argparse.Namespace(config=str(cfg), json=True)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["published"] == {"messages": 3, "bytes": 620}
    assert report["refused"] == {"messages": 1, "by_kind": {"result": 1}}
    assert report["by_topic"]["p/dev/results/door"] == {"messages": 2, "bytes": 500}
    assert report["first"] is not None
    assert cmd_privacy_report(argparse.Namespace(config=str(cfg), json=False)) == 0
    text = capsys.readouterr().out
    assert "p/dev/status" in text and "published: 3 messages, 620 bytes" in text


def test_a_full_disk_warns_once_per_episode_and_counts(tmp_path: Path, caplog) -> None:
    """The chaos run's disk_full fault: one warning per entry flooded the journal."""

    class FullDisk:
        def tell(self) -> int:
            return 0

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

    log = AuditLog(tmp_path, AuditConfig())
    log.record(topic="t", kind="result", size=1)
    real = log._fh
    log._fh = FullDisk()
    caplog.set_level("WARNING", logger="edge_agent.privacy.audit")
    for _ in range(50):
        log.record(topic="t", kind="result", size=1)
    assert log.write_errors == 50
    assert len(caplog.records) == 1 and "No space left" in caplog.records[0].getMessage()
    log._fh = real
    log.record(topic="t", kind="result", size=1)
    assert len(caplog.records) == 2 and "50 entries" in caplog.records[1].getMessage()
    assert len(list(read_entries(tmp_path))) == 2
