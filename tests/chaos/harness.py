"""Pieces of the chaos and soak runs: the agent's config, what a subscriber checks, and the
process's own figures (/proc).

The runs put ``edge-agent run`` (a child process, :class:`tests.e2e.agentproc.AgentProcess`)
between a real mosquitto (:class:`tests.broker.Mosquitto`), a TCP proxy the run owns
(:mod:`tests.chaos.proxy`) and real sources (synthetic frames, an HTTP MJPEG stream served by
the run, :mod:`tests.chaos.mjpeg`), with the default model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.agentproc import write_config

DEVICE = "chaos-1"
PREFIX = "edge-agent"


def agent_config(path: Path, *, state_dir: Path, host: str, port: int,
                 pipelines: Sequence[dict[str, Any]], **sections: Any) -> Path:
    """Write the agent's YAML config: fast reconnects, stats every second, no Prometheus."""
    mqtt = {"host": host, "port": port, "reconnect_max_s": 2, "stats_interval_s": 1,
            **sections.pop("mqtt", {})}
    return write_config(path, {
        "device_id": DEVICE, "state_dir": str(state_dir), "mqtt": mqtt,
        "metrics": {"prometheus": {"enabled": False}}, "pipelines": list(pipelines),
        **sections})


def synthetic_pipeline(name: str, model: Path, fps: float = 10, **extra: Any) -> dict[str, Any]:
    """A synthetic-source pipeline (640x480, people and shapes) on ``model``, 1 thread."""
    return {"name": name,
            "source": {"type": "synthetic", "fps": fps, "width": 640, "height": 480},
            "model": {"path": str(model), "threads": 1}, **extra}


def camera_pipeline(name: str, model: Path, url: str, **extra: Any) -> dict[str, Any]:
    """A live-stream pipeline (``camera`` source on ``url``) on ``model``, 1 thread."""
    return {"name": name, "source": {"type": "camera", "uri": url},
            "model": {"path": str(model), "threads": 1}, **extra}


# --------------------------------------------------------------------------- the process


@dataclass(frozen=True, slots=True)
class ProcFigures:
    """A process's resident memory (kB), open file descriptors and threads."""

    rss_kb: int
    fds: int
    threads: int


def proc_figures(pid: int) -> ProcFigures:
    """Read ``/proc/<pid>`` (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcFigures(rss_kb, fds, threads)


# --------------------------------------------------------------------------- what arrived


@dataclass(slots=True)
class SeqReport:
    """What a subscriber saw of one durable stream (one topic)."""

    topic: str
    first: int = 0
    last: int = 0
    distinct: int = 0
    copies: int = 0
    missing: list[int] = field(default_factory=list)
    boots: int = 0

    @property
    def duplicates(self) -> int:
        """Copies beyond the first of each id (resends: allowed, deduplicated on id)."""
        return self.copies - self.distinct


def seq_report(topic: str, payloads: Iterable[dict[str, Any]]) -> SeqReport:
    """Check one stream's ``seq`` values: every value between the first and last seen, each
    ``id`` with one ``seq`` (a resend repeats both)."""
    rep = SeqReport(topic)
    seqs: dict[int, str] = {}
    boots: set[str] = set()
    for p in payloads:
        rep.copies += 1
        seq, msg_id = int(p["seq"]), str(p["id"])
        if seq in seqs and seqs[seq] != msg_id:
            raise AssertionError(f"{topic}: seq {seq} carried by two ids")
        seqs[seq] = msg_id
        boots.add(str(p.get("boot_id")))
    if seqs:
        rep.first, rep.last = min(seqs), max(seqs)
        rep.missing = [s for s in range(rep.first, rep.last + 1) if s not in seqs]
    rep.distinct = len(seqs)
    rep.boots = len(boots)
    return rep
