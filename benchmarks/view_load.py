"""Does the live view slow the pipeline? Pipeline fps with and without hostile viewers.

``python -m benchmarks.view_load [--seconds 15] [--rounds 3]`` runs the real agent (default
face model on the sample video, ``fps: 0``: as fast as the pipeline takes frames) with the
view on, and alternates phases of ``--seconds`` each, in the same run:

- ``quiet``: nobody connected;
- ``idle50``: 50 idle connections (reopened whenever the server closes them);
- ``hostile``: those, plus one client streaming MJPEG that reads one byte a second
  (reconnected when dropped; while connected it is a viewer, so frames are rendered);
- ``watched``: one normal viewer reading the stream as fast as it comes (the cost of looking).

Pipeline fps per phase is the number of model invocations over the phase, from the agent's
Prometheus endpoint (``edge_agent_stage_seconds_count{stage="invoke"}``: a separate server,
so the view's saturation does not blind the measurement). Prints a table and the ratios
against ``quiet``.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _state(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _invokes(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("edge_agent_stage_seconds_count{") and 'stage="invoke"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class Hostile:
    """50 idle connections and one slow MJPEG reader, kept up until stopped."""

    def __init__(self, port: int, idle: int = 50, slow: bool = True) -> None:
        self.port = port
        self.idle = idle
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._idle_loop, daemon=True)]
        if slow:
            self.threads.append(threading.Thread(target=self._slow_loop, daemon=True))
        self.reconnects = 0

    def _connect(self) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return None

    def _idle_loop(self) -> None:
        socks: list[socket.socket] = []
        while not self.stop.is_set():
            alive = []
            for s in socks:
                s.setblocking(False)
                try:
                    closed = s.recv(1024) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    s.close()
                else:
                    alive.append(s)
            socks = alive
            while len(socks) < self.idle and not self.stop.is_set():
                s = self._connect()
                if s is None:
                    break
                socks.append(s)
                self.reconnects += 1
            self.stop.wait(0.5)
        for s in socks:
            s.close()

    def _slow_loop(self) -> None:
        while not self.stop.is_set():
            s = self._connect()
            if s is None:
                self.stop.wait(0.5)
                continue
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            s.sendall(b"GET /stream/bench.mjpg HTTP/1.0\r\n\r\n")
            try:
                while not self.stop.is_set():
                    if s.recv(1) == b"":
                        break
                    self.stop.wait(1.0)
            except OSError:
                pass
            s.close()

    def __enter__(self) -> Hostile:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


class Watcher:
    """One viewer reading the stream as fast as it comes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.bytes = 0

    def _run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /stream/bench.mjpg HTTP/1.0\r\n\r\n")
            while not self.stop.is_set():
                chunk = s.recv(65536)
                if not chunk:
                    break
                self.bytes += len(chunk)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _phase(metrics_port: int, seconds: float) -> float:
    a, t0 = _invokes(metrics_port), time.monotonic()
    time.sleep(seconds)
    b, t1 = _invokes(metrics_port), time.monotonic()
    return (b - a) / (t1 - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models, labels_path
    from tests.broker import Mosquitto
    from tests.e2e.agentproc import AgentProcess

    models = ensure_default_models()
    video = models[DEFAULT_MODEL].parent / "samples" / "sample.avi"
    port = _free_port()
    metrics_port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump({
            "device_id": "bench", "state_dir": str(Path(tmp) / "state"),
            "mqtt": {"host": broker.host, "port": broker.port},
            "metrics": {"prometheus": {"port": metrics_port}},
            "view": {"enabled": True, "port": port},
            "pipelines": [{"name": "bench", "source": {
                "type": "video", "uri": str(video), "loop": True, "fps": 0},
                "model": {"path": str(models[DEFAULT_MODEL]),
                          "labels": str(labels_path(DEFAULT_MODEL)), "decoder": "anchors"},
                "tracking": {"enabled": True}}],
        }))
        agent = AgentProcess(cfg)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    _state(port)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        print(agent.log())
                        return 1
                    time.sleep(0.5)
            time.sleep(5)  # warm-up
            fps: dict[str, list[float]] = {"quiet": [], "idle50": [], "hostile": [],
                                           "watched": []}
            for _ in range(args.rounds):
                fps["quiet"].append(_phase(metrics_port, args.seconds))
                with Hostile(port, slow=False):
                    time.sleep(2)
                    fps["idle50"].append(_phase(metrics_port, args.seconds))
                with Hostile(port):
                    time.sleep(2)  # let the connections pile up
                    fps["hostile"].append(_phase(metrics_port, args.seconds))
                time.sleep(2)
                with Watcher(port):
                    fps["watched"].append(_phase(metrics_port, args.seconds))
                time.sleep(3)  # the render thread ends after 2 s without viewers
        finally:
            agent.terminate()
            broker.stop()
    quiet = statistics.median(fps["quiet"])
    width = 7 * args.rounds
    print(f"{'phase':<10} {'fps per round':<{width}} {'median':>8} {'vs quiet':>9} "
          f"{'paired':>7}")
    for name, values in fps.items():
        med = statistics.median(values)
        rounds = " ".join(f"{v:6.1f}" for v in values)
        # each phase against the quiet phase of its own round (the load drifts between rounds)
        paired = statistics.median(v / q for v, q in zip(values, fps["quiet"], strict=True))
        print(f"{name:<10} {rounds:<{width}} {med:8.1f} {med / quiet:9.2f} {paired:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
