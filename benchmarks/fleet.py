"""A simulated fleet: N real agents (separate ``edge-agent run`` processes, the default
BlazeFace short-range model on a looping 8-frame video at a low fps) against one mosquitto,
then one staged ``fleet rollout`` to all of them and ``fleet status`` following them.

Figures (absolute, from this one run on this machine; say how loaded it was):

* time from the rollout's start to its exit with every device active (and per wave),
* broker messages per second received and sent during the rollout (mosquitto's own
  ``$SYS/broker/load/messages/{received,sent}/1min`` is too slow; the difference of
  ``$SYS/broker/messages/{received,sent}`` before and after divided by the rollout's time),
* RSS per agent process (median and max, from /proc/PID/status after the rollout),
* CPU seconds per second of ``fleet status`` in its live (terminal) mode following the fleet
  for ``--status-seconds`` (rusage of the child, run in a pseudo-terminal).

Run: ``./dev fleet-bench [--agents 100] [--fps 1] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.signing import generate_key_pair
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.e2e.agentproc import REPO, AgentProcess, Inbox, subscribe, write_config
from tests.e2e.update_harness import write_scene_video

SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _sys_counts(broker: Mosquitto) -> dict[str, int]:
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["$SYS/broker/messages/received",
                                               "$SYS/broker/messages/sent"], inbox)
    try:
        inbox.wait_for(lambda m: len({t for t, _, _ in m}) >= 2, 15)
    finally:
        sub.stop()
    out: dict[str, int] = {}
    with inbox.lock:
        for topic, payload, _ in inbox.messages:
            out[topic.rsplit("/", 1)[-1]] = int(payload)
    return out


def _cli(tmp: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], cwd=tmp,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _status_cpu(tmp: Path, broker_arg: str, seconds: float) -> dict[str, float]:
    """``fleet status`` live in a pseudo-terminal for ``seconds``: CPU s per s."""
    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "fleet", "status",
                             "--broker", broker_arg], stdin=slave, stdout=slave, stderr=slave,
                            cwd=tmp, env=env, preexec_fn=_default_sigint)
    os.close(slave)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    time.sleep(seconds)
    os.kill(proc.pid, signal.SIGINT)
    _, _, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - t0
    stop.set()
    os.close(master)
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": round(elapsed, 1), "cpu_s": round(cpu, 2),
            "cpu_s_per_s": round(cpu / elapsed, 4),
            "max_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def _default_sigint() -> None:
    """In the child: SIGINT's default action (a shell's background job inherits it
    ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(agents: int, fps: float, waves: str, status_seconds: float) -> dict[str, Any]:
    models = ensure_default_models()
    short, full = models[SHORT], models[FULL]
    out: dict[str, Any] = {"agents": agents, "fps": fps, "waves": waves,
                           "load_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="edge-agent-fleet-bench-") as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker", extra_config="sys_interval 1")
        broker.start()
        procs: list[AgentProcess] = []
        try:
            key, pub, _ = generate_key_pair(tmp / "keys")
            video = write_scene_video(tmp / "scene.avi", 8)
            inbox = Inbox()
            sub = subscribe(broker.host, broker.port, ["edge-agent/+/inventory"], inbox)
            t0 = time.monotonic()
            for i in range(agents):
                dev = f"sim-{i:03d}"
                cfg = write_config(tmp / f"{dev}.yaml", {
                    "device_id": dev, "state_dir": str(tmp / dev),
                    "mqtt": {"host": broker.host, "port": broker.port, "groups": ["all"],
                             "stats_interval_s": 10},
                    "metrics": {"prometheus": {"enabled": False}},
                    "updates": {"public_keys": [str(pub)], "watch_inferences": 5,
                                "watch_seconds": 3},
                    "pipelines": [{"name": "door",
                                   "model": {"path": str(short), "decoder": "anchors",
                                             "labels": str(labels_path(SHORT))},
                                   "source": {"type": "video", "uri": str(video), "loop": True,
                                              "fps": fps}}]})
                procs.append(AgentProcess(cfg))
            ok = inbox.wait_for(lambda m: len({t for t, _, _ in m}) >= agents, 1800)
            sub.stop()
            if not ok:
                raise SystemExit(f"only {len(inbox.messages)} of {agents} agents came up")
            out["startup_s"] = round(time.monotonic() - t0, 1)
            manifest = tmp / "full.json"
            signed = _cli(tmp, "model", "sign", str(full), "--key", str(key), "--name",
                          "face-full", "--version", "1", "--labels", str(labels_path(FULL)),
                          "--for-group", "all", "--out", str(manifest))
            assert signed.returncode == 0, signed.stderr
            before = _sys_counts(broker)
            t1 = time.monotonic()
            done = _cli(tmp, "fleet", "rollout", str(manifest), "--group", "all", "--pipeline",
                        "door", "--broker", f"{broker.host}:{broker.port}", "--file", str(full),
                        "--waves", waves, "--wave-timeout", "1200", "--report",
                        str(tmp / "report.json"))
            rollout_s = time.monotonic() - t1
            after = _sys_counts(broker)
            rep = json.loads((tmp / "report.json").read_text())
            out["rollout"] = {"exit": done.returncode, "seconds": round(rollout_s, 1),
                              "outcomes": rep["outcomes"],
                              "wave_sizes": [len(w) for w in rep["waves"]]}
            out["broker_msgs_per_s"] = {
                k: round((after[k] - before[k]) / rollout_s, 1) for k in ("received", "sent")}
            rss = [r for r in (_rss_kib(p.pid) for p in procs) if r]
            out["agent_rss_mib"] = {"median": round(statistics.median(rss) / 1024, 1),
                                    "max": round(max(rss) / 1024, 1), "n": len(rss)}
            out["fleet_status"] = _status_cpu(tmp, f"{broker.host}:{broker.port}",
                                              status_seconds)
            sha = sha256_file(full)
            js = _cli(tmp, "fleet", "status", "--broker", f"{broker.host}:{broker.port}",
                      "--json")
            rows = json.loads(js.stdout)
            out["devices_on_new_model"] = sum(
                1 for r in rows if r["pipelines"]["door"]["model"]["sha256"] == sha)
        finally:
            for p in procs:
                with contextlib.suppress(AssertionError):  # it was killed: figures stand
                    p.terminate(60)
            broker.stop()
    out["load_after"] = os.getloadavg()
    out["self_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                    1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./dev fleet-bench", description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--waves", default="1,10,50,100%")
    ap.add_argument("--status-seconds", type=float, default=20.0)
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    result = run(args.agents, args.fps, args.waves, args.status_seconds)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["rollout"]["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
