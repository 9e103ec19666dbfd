"""``edge-agent demo`` (the README's first command, minus the set-up) runs end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.broker import mosquitto_binary
from tests.conftest import IN_CI, REPO, need_module

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("broker", ["mosquitto", "amqtt"])
def test_demo_runs_and_stops_cleanly(broker: str) -> None:
    """With mosquitto, and with the embedded amqtt broker a machine without mosquitto gets."""
    if broker == "mosquitto" and mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto is not installed")
    if broker == "amqtt":
        need_module("amqtt")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if broker == "amqtt":
        env["EDGE_AGENT_DEMO_BROKER"] = "amqtt"
    # as a user does: start it, wait for results, press Ctrl-C (no fixed run time, which a
    # loaded machine can spend entirely on broker start and model load)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "demo", "--plain"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None \
            and not any("/results/door" in line for line in list(lines)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("the demo did not stop within 60 s of Ctrl-C:\n" + "".join(lines)[-3000:])
    reader.join(10)
    err = proc.stderr.read() if proc.stderr is not None else ""
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "/results/door" in out, out[-3000:] + err[-3000:]
    assert "state offline" in out, "the retained offline status must arrive at the end"
    assert "agent exit code 0" in out
    assert "Traceback" not in err
    assert f"demo: {broker} on 127.0.0.1" in out
