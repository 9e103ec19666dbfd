"""``python -m benchmarks.soak`` (``./dev soak``): the daemon for 30 minutes or more, figures
every minute.

``edge-agent run`` (a child process) with the default model on a synthetic 640x480 source at
10 fps (tracking and camera health on), publishing to the run's own mosquitto; a subscriber
records every result. Each minute: the agent's RSS, open file descriptors and threads (from
/proc), the pipeline's fps and the outbox depth (from its ``stats`` messages) and the p95
latency of that minute's results (arrival at the subscriber minus the result's ``ts``). Written
to ``soak.csv`` and ``soak.png`` in ``--out``, with a ``soak.json`` summary: RSS growth after
the warm-up, fd and thread growth, and whether ``seq`` stayed gap-free.

Usage: ``python -m benchmarks.soak [--minutes 30] [--warmup 5] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models  # noqa: E402
from tests.broker import Mosquitto  # noqa: E402
from tests.chaos.harness import (  # noqa: E402
    DEVICE,
    PREFIX,
    agent_config,
    proc_figures,
    seq_report,
    synthetic_pipeline,
)
from tests.e2e.agentproc import AgentProcess  # noqa: E402
from tests.e2e.recorder import Recorder, parse_ts, percentile  # noqa: E402

COLUMNS = ("minute", "elapsed_s", "rss_mb", "fds", "threads", "fps", "p95_latency_ms",
           "outbox_depth", "results")


def _latest_stats(rec: Recorder, since: int) -> dict[str, Any]:
    stats = rec.json(f"{DEVICE}/stats", since)
    return stats[-1] if stats else {}


def run(minutes: float, warmup: float, out: Path, fps: float) -> dict[str, Any]:
    """Run the soak; write CSV, PNG and JSON into ``out``; return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    model = ensure_default_models()[DEFAULT_MODEL]
    with tempfile.TemporaryDirectory(prefix="edge-soak-") as tmp_name:
        tmp = Path(tmp_name)
        broker = Mosquitto(tmp / "broker").start()
        rec = Recorder(broker.host, broker.port, [f"{PREFIX}/{DEVICE}/#"])
        rec.start()
        config = agent_config(
            tmp / "agent.yaml", state_dir=tmp / "state", host=broker.host, port=broker.port,
            pipelines=[synthetic_pipeline("soak", model, fps=fps,
                                          tracking={"enabled": True},
                                          camera_health={"enabled": True})],
            mqtt={"stats_interval_s": 10})
        agent = AgentProcess(config)
        rows: list[dict[str, Any]] = []
        try:
            t0 = time.monotonic()
            mark = rec.mark()
            for minute in range(1, int(minutes) + 1):
                deadline = t0 + minute * 60
                while time.monotonic() < deadline:
                    if agent.proc.poll() is not None:
                        raise RuntimeError("agent died:\n" + agent.log()[-4000:])
                    time.sleep(1.0)
                figures = proc_figures(agent.pid)
                copies = rec.select("/results/soak", mark)
                latencies = [(c.wall - parse_ts(c.json()["ts"])) * 1000 for c in copies]
                stats = _latest_stats(rec, mark)
                pipe = (stats.get("pipelines") or {}).get("soak", {})
                mark = rec.mark()
                rows.append({
                    "minute": minute, "elapsed_s": round(time.monotonic() - t0, 1),
                    "rss_mb": round(figures.rss_kb / 1024, 2), "fds": figures.fds,
                    "threads": figures.threads, "fps": pipe.get("fps"),
                    "p95_latency_ms": round(percentile(latencies, 95), 1) if latencies else None,
                    "outbox_depth": (stats.get("outbox") or {}).get("depth"),
                    "results": len(copies)})
                print(json.dumps(rows[-1]), flush=True)
                with open(out / "soak.csv", "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=COLUMNS)
                    writer.writeheader()
                    writer.writerows(rows)
        finally:
            code = agent.terminate()
            time.sleep(1.0)
            rec.close()
            broker.stop()
        results = [c.json() for c in rec.select("/results/soak")]
        events = [c.json() for c in rec.select("/events/soak") if c.payload]
    report = seq_report("results/soak", results)
    summary = _summary(rows, warmup, report, code, events)
    (out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, out / "soak.png", warmup)
    return summary


def _summary(rows: list[dict[str, Any]], warmup: float, report: Any, code: int,
             events: list[dict[str, Any]]) -> dict[str, Any]:
    after = [r for r in rows if r["minute"] > warmup] or rows
    first, last = after[0], after[-1]
    tail = after[-3:]
    rss_growth = statistics.median(r["rss_mb"] for r in tail) - after[0]["rss_mb"]
    lat = [r["p95_latency_ms"] for r in after if r["p95_latency_ms"] is not None]
    fps = [r["fps"] for r in after if r["fps"] is not None]
    health = [e["event"] for e in events if str(e.get("event", "")).startswith(("camera_",
                                                                                "source_"))]
    return {
        "minutes": len(rows), "warmup_minutes": warmup,
        "rss_mb_after_warmup": first["rss_mb"], "rss_mb_end": last["rss_mb"],
        "rss_growth_mb": round(rss_growth, 2),
        "rss_max_mb": max(r["rss_mb"] for r in after),
        "fds": [min(r["fds"] for r in after), max(r["fds"] for r in after)],
        "fd_growth": last["fds"] - first["fds"],
        "threads": [min(r["threads"] for r in after), max(r["threads"] for r in after)],
        "thread_growth": last["threads"] - first["threads"],
        "fps_median": statistics.median(fps) if fps else None,
        "p95_latency_ms_median": statistics.median(lat) if lat else None,
        "p95_latency_ms_max": max(lat) if lat else None,
        "outbox_depth_max": max((r["outbox_depth"] or 0) for r in rows),
        "results": report.distinct, "seq_missing": len(report.missing),
        "duplicates": report.duplicates, "camera_health_events": health,
        "exit_code": code,
    }


def plot(rows: list[dict[str, Any]], path: Path, warmup: float) -> None:
    """The per-minute figures as a 2x3 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [r["minute"] for r in rows]
    panels = (("rss_mb", "RSS (MB)"), ("fds", "open fds"), ("threads", "threads"),
              ("fps", "fps"), ("p95_latency_ms", "p95 latency (ms)"),
              ("outbox_depth", "outbox depth"))
    fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        ys = [r[key] if r[key] is not None else float("nan") for r in rows]
        ax.plot(minutes, ys, marker=".")
        ax.axvline(warmup, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minute")
    fig.suptitle(f"edge-agent soak: {len(rows)} min, default model, synthetic 640x480 "
                 f"(warm-up to the dotted line)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes before growth counts")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "resilience")
    args = ap.parse_args(argv)
    summary = run(args.minutes, args.warmup, args.out, args.fps)
    print(json.dumps(summary, indent=2))
    ok = (summary["seq_missing"] == 0 and summary["rss_growth_mb"] <= 2.0
          and summary["fd_growth"] <= 0 and summary["thread_growth"] <= 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
