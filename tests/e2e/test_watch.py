"""``edge-agent watch`` in a pseudo-terminal and through a pipe, against a live agent."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.consumer.sequence import Gap
from edge_agent.consumer.watch import WatchView
from edge_agent.default_models import (
    DEFAULT_MODEL,
    ensure_default_models,
    labels_path,
    sample_video_path,
)
from tests.broker import Mosquitto
from tests.e2e.agentproc import REPO, AgentProcess, write_config

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture
def agent(tmp_path: Path, broker: Mosquitto) -> Iterator[AgentProcess]:
    models = ensure_default_models()
    cfg = write_config(tmp_path / "agent.yaml", {
        "device_id": "watch-dev", "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": 5},
        "metrics": {"prometheus": {"enabled": False}},
        "pipelines": [{"name": "door",
                       "source": {"type": "video", "uri": str(sample_video_path()),
                                  "loop": True},
                       "model": {"path": str(models[DEFAULT_MODEL]),
                                 "labels": str(labels_path(DEFAULT_MODEL))},
                       "score_threshold": 0.5}]})
    proc = AgentProcess(cfg)
    yield proc
    proc.terminate()


def watch_argv(broker: Mosquitto, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent", "watch", "--broker",
            f"{broker.host}:{broker.port}", "--device", "watch-dev", "--interval", "0.5",
            *extra]


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(REPO), TERM="xterm-256color")
    e.pop("NO_COLOR", None)
    return e


def test_watch_in_a_terminal(broker: Mosquitto, agent: AgentProcess) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(watch_argv(broker), stdin=slave, stdout=slave, stderr=slave,
                            env=env(), cwd=REPO, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
            text = ANSI.sub("", out[-8000:].decode(errors="replace"))
            if re.search(r"watch-dev/door\s+online\s+\d+", text) and "face:" in text:
                break
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)
    text = out.decode(errors="replace")
    plain = ANSI.sub("", text)
    assert "\x1b[32m" in text, "no colour on a terminal"  # online in green
    assert "\x1b[H" in text, "the table is not redrawn in place"
    assert re.search(r"watch-dev/door\s+online\s+\d+", plain), plain[-2000:] + agent.log()
    assert re.search(r"face:\d+", plain), plain[-2000:]
    assert "latest: face 0." in plain


def test_watch_piped_prints_plain_lines(broker: Mosquitto, agent: AgentProcess) -> None:
    proc = subprocess.run(watch_argv(broker, "--seconds", "20"), capture_output=True,
                          env=env(), cwd=REPO, timeout=120, check=False)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "\x1b[" not in out, "escape codes in piped output"
    lines = [ln for ln in out.splitlines() if ln.startswith("watch-dev/door results=")]
    assert lines, out + agent.log()
    assert re.search(r"fps=\d+\.\d latency_ms=\d+/\d+ labels=face:\d+", lines[-1]), lines[-1]


def test_view_reports_gaps_in_red() -> None:
    import io

    out = io.StringIO()
    view = WatchView(out, live=False, colour=True)
    view.add(Gap("d", "results", "cam", 5, 7, at_restart=True))
    assert "\x1b[1;31mGAP d/cam results seq 5-7 (3 missing, at a restart)\x1b[0m" in out.getvalue()


def test_watch_unreachable_broker_is_one_line() -> None:
    from tests.broker import free_port

    proc = subprocess.run([sys.executable, "-m", "edge_agent", "watch", "--broker",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("edge-agent watch: cannot subscribe"), proc.stderr
    assert "Traceback" not in proc.stderr
