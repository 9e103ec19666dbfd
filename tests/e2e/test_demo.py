"""``edge-agent demo`` (the README's first command, minus the set-up) runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys

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
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "demo", "--seconds", "12",
                           "--plain"], capture_output=True, text=True, timeout=180, cwd=REPO,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "/results/door" in out, out[-3000:]
    assert "state offline" in out, "the retained offline status must arrive at the end"
    assert "agent exit code 0" in out
    assert "Traceback" not in proc.stderr
    assert f"demo: {broker} on 127.0.0.1" in out
