"""`edge-agent run` under a fake systemd: READY=1, periodic WATCHDOG=1, and no more pings once a
pipeline stalls (a camera source on a FIFO nobody writes to: opening it blocks, for real)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Mosquitto
from tests.conftest import REPO, shared_model

pytestmark = pytest.mark.slow

READY_TIMEOUT_S = 90.0  # model load + broker connect on a slow CI machine


class FakeSystemd:
    """The datagram socket systemd would listen on, owned by the test."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def next(self, timeout: float) -> list[str] | None:
        """The next datagram's fields, or None when none arrives within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = data.decode().split("\n")
        self.received.extend(fields)
        return fields

    def wait_for(self, field: str, timeout: float,
                 proc: subprocess.Popen[bytes] | None = None) -> None:
        """Wait for a datagram holding ``field``; fail early when ``proc`` has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = self.next(min(1.0, max(0.1, deadline - time.monotonic())))
            if fields is not None and field in fields:
                return
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the agent exited ({proc.returncode}) before {field}")
        raise AssertionError(f"{field} did not arrive; got {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    s = FakeSystemd(tmp_path / "notify.sock")
    try:
        yield s
    finally:
        s.close()


def _config(tmp_path: Path, broker: Mosquitto, pipelines: str) -> Path:
    model = shared_model("face_detection_full_range_sparse.tflite")  # default models
    labels = shared_model("face.txt")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""
device_id: notify-test
state_dir: {tmp_path / "state"}
mqtt: {{host: {broker.host}, port: {broker.port}}}
metrics: {{prometheus: {{bind: 127.0.0.1, port: 0}}}}
logging: {{level: info, format: text}}
updates: {{enabled: false}}
audit: {{enabled: false}}
pipelines:
{pipelines.replace("MODEL", str(model)).replace("LABELS", str(labels))}
""")
    return cfg


SYNTHETIC = """  - name: ok
    source: {type: synthetic, fps: 10, width: 320, height: 240}
    model: {path: MODEL, labels: LABELS, decoder: anchors, threads: 1}
"""


def _spawn(cfg: Path, sock: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=str(sock), WATCHDOG_USEC="1000000",
               PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)  # the child's pid is not known before the spawn
    env.pop("JOURNAL_STREAM", None)
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "-c", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _stop(proc: subprocess.Popen[bytes], fifo: Path | None = None) -> int:
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if fifo is not None:
            # wake a reader blocked in open(2): a writer that opens and closes gives it EOF
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(10)


def _log(tmp_path: Path) -> str:
    return (tmp_path / "agent.log").read_text(errors="replace")[-4000:]


def test_ready_then_watchdog_pings_then_stopping(tmp_path: Path, broker: Mosquitto,
                                                 fake_systemd: FakeSystemd) -> None:
    cfg = _config(tmp_path, broker, SYNTHETIC)
    proc = _spawn(cfg, fake_systemd.path, tmp_path)
    try:
        fake_systemd.wait_for("READY=1", READY_TIMEOUT_S, proc)
        for _ in range(3):  # pings every WATCHDOG_USEC / 2 while healthy
            fake_systemd.wait_for("WATCHDOG=1", 10, proc)
    except AssertionError as exc:
        _stop(proc)
        raise AssertionError(f"{exc}\n--- agent log ---\n{_log(tmp_path)}") from None
    try:
        # the running agent's /metrics (port 0: the bound URL is in the log)
        m = re.search(r"Prometheus metrics on (http://\S+/metrics)", _log(tmp_path))
        assert m, "no metrics URL logged"
        with urllib.request.urlopen(m.group(1), timeout=10) as resp:
            text = resp.read().decode()
        for stage in ("capture", "preprocess", "invoke", "decode"):
            assert f'edge_agent_stage_seconds_count{{pipeline="ok",stage="{stage}"}}' in text
        assert 'edge_agent_model_info{pipeline="ok"' in text
    finally:
        code = _stop(proc)
    fake_systemd.wait_for("STOPPING=1", 30)
    assert code == 0, _log(tmp_path)
    assert fake_systemd.received.index("READY=1") < fake_systemd.received.index("WATCHDOG=1")


def test_sighup_reload_valid_then_invalid(tmp_path: Path, broker: Mosquitto,
                                          fake_systemd: FakeSystemd) -> None:
    cfg = _config(tmp_path, broker, SYNTHETIC)
    proc = _spawn(cfg, fake_systemd.path, tmp_path)
    try:
        fake_systemd.wait_for("READY=1", READY_TIMEOUT_S, proc)
        # a valid change: a second pipeline
        cfg.write_text(cfg.read_text() + SYNTHETIC.replace("name: ok", "name: two"))
        proc.send_signal(signal.SIGHUP)
        fake_systemd.wait_for("RELOADING=1", 30, proc)
        fake_systemd.wait_for("READY=1", 60, proc)
        # an invalid file: refused, the old config keeps running and the pings go on
        cfg.write_text("pipelines: []\n")
        proc.send_signal(signal.SIGHUP)
        fake_systemd.wait_for("RELOADING=1", 30, proc)
        fake_systemd.wait_for("READY=1", 60, proc)
        fake_systemd.wait_for("WATCHDOG=1", 10, proc)
        assert proc.poll() is None
        log = _log(tmp_path)
        assert "reload refused" in log, log
    except AssertionError as exc:
        _stop(proc)
        raise AssertionError(f"{exc}\n--- agent log ---\n{_log(tmp_path)}") from None
    assert _stop(proc) == 0, _log(tmp_path)


def test_watchdog_pings_stop_when_a_pipeline_stalls(tmp_path: Path, broker: Mosquitto,
                                                    fake_systemd: FakeSystemd) -> None:
    fifo = tmp_path / "camera.fifo"
    os.mkfifo(fifo)
    stalled = f"""  - name: stalled
    source: {{type: camera, uri: {fifo}}}
    model: {{path: MODEL, labels: LABELS, decoder: anchors, threads: 1}}
    stall_timeout_s: 2
"""
    cfg = _config(tmp_path, broker, SYNTHETIC + stalled)
    proc = _spawn(cfg, fake_systemd.path, tmp_path)
    try:
        fake_systemd.wait_for("READY=1", READY_TIMEOUT_S, proc)
        # pings may flow until the stalled pipeline's heartbeat is 2 s old; then a silence
        # of several ping periods (0.5 s each) must come, while the agent keeps running
        deadline = time.monotonic() + 60
        silent = False
        while time.monotonic() < deadline:
            fields = fake_systemd.next(4.0)
            if fields is None:
                silent = True
                break
        assert silent, f"WATCHDOG=1 kept arriving: {fake_systemd.received[-5:]}"
        assert proc.poll() is None, "the agent exited instead of stalling"
        assert "withholding watchdog pings" in _log(tmp_path)
    except AssertionError as exc:
        _stop(proc, fifo)
        raise AssertionError(f"{exc}\n--- agent log ---\n{_log(tmp_path)}") from None
    _stop(proc, fifo)
