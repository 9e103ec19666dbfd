"""Peak RSS of the daemon with the default model, and RSS growth over a long run.

The real daemon (``python -m edge_agent run``) runs in a child process: the default model
(BlazeFace full range) on a looping 640x480 MJPEG clip, publishing every result through the
policy, the egress guard and the SQLite outbox to a local mosquitto. Its ``VmRSS`` is sampled
from ``/proc/<pid>/status`` once a second and its ``VmHWM`` (peak) read at the end.

Growth is the median RSS of the last 10% of the run minus the median RSS of the 10% that
follows the warm-up (the first 20% of the run, at least 20 s); the least-squares slope after
the warm-up is reported as MB per 10 minutes too.

Run alone: ``.venv/bin/python -m benchmarks.memory --seconds 600``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, default_model, workdir, write_video


def _status(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float, fps: float = 10.0) -> dict[str, Any]:
    """Run the daemon for ``seconds`` and return the RSS figures (or a skip note)."""
    from tests.broker import Mosquitto, mosquitto_binary

    model, labels = default_model()
    if not model.exists():
        return {"skipped": f"{model} is missing (run: edge-agent models fetch)"}
    if mosquitto_binary() is None:
        return {"skipped": "mosquitto is not installed"}
    with workdir() as tmp:
        clip = write_video(tmp / "clip.avi", seconds=20, fps=fps)
        broker = Mosquitto(tmp / "broker", persistence=False)
        broker.start()
        pipeline: dict[str, Any] = {
            "name": "door", "source": {"type": "video", "uri": str(clip), "loop": True},
            "model": {"path": str(model), "decoder": "auto"},
        }
        if labels is not None:
            pipeline["model"]["labels"] = str(labels)
        cfg = {"device_id": "bench", "state_dir": str(tmp / "state"),
               "mqtt": {"host": broker.host, "port": broker.port},
               "pipelines": [pipeline], "metrics": {"prometheus": {"port": 0}},
               "updates": {"enabled": False}, "logging": {"level": "warning"}}
        path = tmp / "config.yaml"
        path.write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c", str(path)],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=open(tmp / "agent.log", "wb"))  # noqa: SIM115
        samples: list[tuple[float, float]] = []
        hwm = 0.0
        cpu = 0.0
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < seconds and proc.poll() is None:
                time.sleep(1.0)
                try:
                    st = _status(proc.pid)
                    cpu = _cpu_s(proc.pid)
                except OSError:
                    break
                samples.append((time.monotonic() - t0, st.get("VmRSS", 0.0)))
                hwm = max(hwm, st.get("VmHWM", 0.0))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            broker.stop()
        log = (tmp / "agent.log").read_text(errors="replace")[-2000:]
    if len(samples) < 10:
        return {"error": f"the daemon stopped after {len(samples)} s", "log": log}
    return summarise(samples, hwm, cpu, seconds, fps)


def summarise(samples: list[tuple[float, float]], hwm: float, cpu: float, seconds: float,
              fps: float) -> dict[str, Any]:
    """Growth and slope from ``(t, rss_mb)`` samples."""
    warm = max(20.0, 0.2 * seconds)
    after = [(t, r) for t, r in samples if t >= warm] or samples[len(samples) // 2:]
    n = max(3, len(after) // 10)
    start = statistics.median(r for _, r in after[:n])
    end = statistics.median(r for _, r in after[-n:])
    ts = [t for t, _ in after]
    rs = [r for _, r in after]
    mt, mr = statistics.fmean(ts), statistics.fmean(rs)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (r - mr) for t, r in after) / var if var else 0.0
    return {"seconds": round(samples[-1][0]), "fps": fps, "peak_rss_mb": round(hwm, 1),
            "rss_after_warmup_mb": round(start, 1), "rss_end_mb": round(end, 1),
            "growth_mb": round(end - start, 2), "slope_mb_per_10min": round(slope * 600, 2),
            "cpu_s": round(cpu, 1), "samples": len(samples)}


def main() -> int:
    """``python -m benchmarks.memory [--seconds N] [--fps F]``: print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--fps", type=float, default=10.0, help="clip frame rate (paced)")
    args = ap.parse_args()
    print(json.dumps(run(args.seconds, args.fps), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
