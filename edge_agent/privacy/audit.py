"""The local, append-only audit log of what left the device (metadata only, never content).

One JSON line per outgoing (or refused) message: ``{"t", "topic", "kind", "pipeline",
"size", "outcome"}`` (plus ``reason`` for refusals) under ``state_dir/audit/audit.log``,
rotated by size to ``audit.log.1`` .. ``audit.log.N``. ``edge-agent privacy-report``
summarises it.

Entries that remote input can cause (replies to commands, refused messages) are rate-limited
per ``(kind, outcome, reason)``: at most ``audit.max_per_reason_per_minute`` a minute; the rest
of that minute is written as one line with ``"outcome": "suppressed"`` and a ``count``. A
flood of junk commands so costs a line per minute, and cannot rotate the history out.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.config import AuditConfig

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.log"
RATE_LIMITED_KINDS = frozenset({"cmd_reply"})
WINDOW_S = 60.0


class AuditLog:
    """Append-only, size-rotated JSON-lines log; safe to call from several threads."""

    def __init__(self, directory: str | Path, cfg: AuditConfig | None = None) -> None:
        """Open (create) ``directory/audit.log``; nothing is written when ``cfg.enabled`` is off.

        Args:
            directory: usually ``state_dir / "audit"``.
            cfg: size bound and number of rotated files.
        """
        self.cfg = cfg or AuditConfig()
        self.path = Path(directory) / AUDIT_FILE
        self._lock = threading.Lock()
        self._fh: Any = None
        self.write_errors = 0
        self._failing = 0  # entries lost in the current run of failures
        self._windows: dict[tuple[str, str, str | None], list[float]] = {}  # [start, n]
        self.suppressed = 0
        if self.cfg.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def record(self, *, topic: str, kind: str, size: int, pipeline: str | None = None,
               outcome: str = "published", reason: str | None = None) -> None:
        """Append one line; an I/O error is counted and logged, never raised to the sender."""
        if not self.cfg.enabled:
            return
        now = time.time()
        entry: dict[str, Any] = {"t": round(now, 3), "topic": topic, "kind": kind,
                                 "pipeline": pipeline, "size": int(size), "outcome": outcome}
        if reason is not None:
            entry["reason"] = reason
        lines: list[dict[str, Any]] = [entry]
        if kind in RATE_LIMITED_KINDS or outcome != "published":
            lines = self._limit((kind, outcome, reason), entry, time.monotonic())
        for item in lines:
            self._write((json.dumps(item, separators=(",", ":")) + "\n").encode())

    def _limit(self, key: tuple[str, str, str | None], entry: dict[str, Any],
               now: float) -> list[dict[str, Any]]:
        """The lines to write for ``entry`` under the per-reason rate limit."""
        with self._lock:
            window = self._windows.get(key)
            out: list[dict[str, Any]] = []
            if window is None or now - window[0] >= WINDOW_S:
                if window is not None and window[1] > self.cfg.max_per_reason_per_minute:
                    out.append({"t": entry["t"], "topic": "", "kind": key[0],
                                "pipeline": None, "size": 0, "outcome": "suppressed",
                                "reason": key[2], "of": key[1],
                                "count": int(window[1] - self.cfg.max_per_reason_per_minute)})
                if len(self._windows) > 1024:  # reasons are few; junk ones are bounded too
                    self._windows.clear()
                window = self._windows[key] = [now, 0.0]
            window[1] += 1
            if window[1] <= self.cfg.max_per_reason_per_minute:
                out.append(entry)
            else:
                self.suppressed += 1
            return out

    def _write(self, line: bytes) -> None:
        with self._lock:
            try:
                if self._fh is None:
                    self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115
                if self._fh.tell() + len(line) > self.cfg.max_bytes:
                    self._rotate()
                self._fh.write(line)
                if self._failing:
                    logger.warning("audit log %s writable again (%d entries were not written)",
                                   self.path, self._failing)
                    self._failing = 0
            except OSError as exc:
                self.write_errors += 1
                if not self._failing:  # once per episode: a full disk fails every entry
                    logger.warning("audit log %s: %s (entries are not written until it "
                                   "works again; counted in write_errors)", self.path, exc)
                self._failing += 1

    def _rotate(self) -> None:
        self._fh.close()
        self._fh = None
        n = self.cfg.backups
        if n == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(n - 1, 0, -1):
                src = self.path.with_name(f"{AUDIT_FILE}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{AUDIT_FILE}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{AUDIT_FILE}.1"))
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115

    def close(self) -> None:
        """Close the file (a later record reopens it)."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_entries(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every entry in ``directory``, oldest rotated file first; broken lines are skipped."""
    base = Path(directory) / AUDIT_FILE
    files = sorted(base.parent.glob(f"{AUDIT_FILE}.*"),
                   key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    for path in [*files, base]:
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry


@dataclass
class _Tally:
    messages: int = 0
    bytes: int = 0

    def add(self, size: int) -> None:
        self.messages += 1
        self.bytes += size


@dataclass
class AuditSummary:
    """Counts and bytes per kind and per topic, refusals, and the time range covered."""

    first: float | None = None
    last: float | None = None
    published: _Tally = field(default_factory=_Tally)
    refused: _Tally = field(default_factory=_Tally)
    by_kind: dict[str, _Tally] = field(default_factory=dict)
    by_topic: dict[str, _Tally] = field(default_factory=dict)
    refused_by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        def tallies(d: dict[str, _Tally]) -> dict[str, dict[str, int]]:
            return {k: {"messages": v.messages, "bytes": v.bytes} for k, v in sorted(d.items())}
        return {
            "first": _iso(self.first), "last": _iso(self.last),
            "published": {"messages": self.published.messages, "bytes": self.published.bytes},
            "refused": {"messages": self.refused.messages, "by_kind": dict(
                sorted(self.refused_by_kind.items()))},
            "by_kind": tallies(self.by_kind), "by_topic": tallies(self.by_topic),
        }


def summarise(entries: Iterator[dict[str, Any]]) -> AuditSummary:
    """Fold audit entries into an :class:`AuditSummary`."""
    s = AuditSummary()
    for e in entries:
        t = e.get("t")
        if isinstance(t, (int, float)):
            s.first = t if s.first is None else min(s.first, t)
            s.last = t if s.last is None else max(s.last, t)
        kind, size = str(e.get("kind")), int(e.get("size") or 0)
        if e.get("outcome") == "published":
            s.published.add(size)
            s.by_kind.setdefault(kind, _Tally()).add(size)
            s.by_topic.setdefault(str(e.get("topic")), _Tally()).add(size)
        else:
            s.refused.add(size)
            s.refused_by_kind[kind] = s.refused_by_kind.get(kind, 0) + 1
    return s


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def format_report(summary: AuditSummary) -> str:
    """The human-readable report."""
    d = summary.as_dict()
    lines = [f"audit log from {d['first'] or '-'} to {d['last'] or '-'}",
             f"published: {d['published']['messages']} messages, {d['published']['bytes']} bytes",
             f"refused:   {d['refused']['messages']} messages"
             + "".join(f", {k}: {v}" for k, v in d["refused"]["by_kind"].items()),
             "", f"{'kind':<14}{'messages':>10}{'bytes':>14}"]
    lines += [f"{k:<14}{v['messages']:>10}{v['bytes']:>14}" for k, v in d["by_kind"].items()]
    lines += ["", f"{'topic':<56}{'messages':>10}{'bytes':>14}"]
    lines += [f"{k:<56}{v['messages']:>10}{v['bytes']:>14}" for k, v in d["by_topic"].items()]
    return "\n".join(lines)
