"""A broker that cannot be reached shows in ``run``'s log, status and stats.

The daemon starts against a loopback port where nothing listens: within 5 s of "running" its
log names the address and the reason; then a real mosquitto is started on that port and the
log says it connected, after how long, and how deep the outbox was. The stats and the retained
status carry ``mqtt.connected``, ``last_error`` and ``down_since``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from tests.broker import Mosquitto, free_port, mosquitto_binary
from tests.conftest import IN_CI
from tests.e2e.agentproc import AgentProcess, Inbox, subscribe, write_config
from tests.e2e.test_run import _video

pytestmark = pytest.mark.slow


def _wait_log(agent: AgentProcess, pattern: str, timeout: float) -> re.Match[str] | None:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, agent.log())
        if m or time.monotonic() >= deadline or agent.proc.poll() is not None:
            return m
        time.sleep(0.05)


def test_unreachable_broker_is_logged_then_the_reconnect(tmp_path: Path) -> None:
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed; ./dev test installs it")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    model = ensure_default_models()[DEFAULT_MODEL]
    cfg = write_config(tmp_path / "config.yaml", {
        "device_id": "outage-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": port, "stats_interval_s": 1,
                 "reconnect_max_s": 2},
        "metrics": {"prometheus": {"enabled": False}},
        "pipelines": [{"name": "door", "model": {"path": str(model)},
                       "source": {"type": "video", "uri": str(_video(tmp_path / "v.avi")),
                                  "loop": True, "fps": 10}}],
    })
    agent = AgentProcess(cfg)
    broker = Mosquitto(tmp_path / "broker", port=port)
    try:
        assert _wait_log(agent, r"running: device outage-1", 60), agent.log()
        started = time.monotonic()
        line = _wait_log(agent, rf"cannot connect to broker 127\.0\.0\.1:{port}: "
                                r"connection refused[^\n]*", 5)
        assert line, f"no log line with address and reason within 5 s:\n{agent.log()}"
        assert time.monotonic() - started <= 5.5
        # results pile up in the outbox meanwhile; the log says so when the broker is back
        time.sleep(1.5)
        broker.start()
        back = _wait_log(agent, rf"connected to broker 127\.0\.0\.1:{port} after "
                                r"([0-9.]+) s down \(last error: connection refused.*?\); "
                                r"outbox depth (\d+)", 30)
        assert back, f"no reconnect line:\n{agent.log()}"
        assert float(back.group(1)) >= 1.5
        assert int(back.group(2)) > 0, "the video produced results while the broker was down"
        # one report per outage, not one per attempt: paho retried several times meanwhile
        assert agent.log().count("cannot connect to broker") == 1, agent.log()

        inbox = Inbox()
        sub = subscribe(broker.host, broker.port, ["edge-agent/outage-1/#"], inbox)
        try:
            assert inbox.wait_for(lambda m: any(t.endswith("/stats") for t, _, _ in m), 15)
            stats = inbox.json("/stats")[-1]["mqtt"]
            assert stats["connected"] is True and stats["down_since"] is None
            assert "connection refused" in stats["last_error"]
            assert stats["connect_failures"] >= 1
            status = [s for s in inbox.json("/status") if s["state"] == "online"][-1]
            assert status["mqtt"]["connected"] is True
            assert "connection refused" in status["mqtt"]["last_error"]
        finally:
            sub.stop()
    finally:
        code = agent.terminate()
        broker.stop()
    assert code == 0, agent.log()
