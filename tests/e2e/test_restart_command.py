"""A signed ``restart`` command: the agent replies, stops cleanly and exits 75 (EX_TEMPFAIL),
so systemd's ``Restart=on-failure`` starts it again; an unsigned one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from edge_agent.mqtt.signed import sign_command
from edge_agent.updater.signing import generate_key_pair, load_private_key
from tests.broker import Mosquitto
from tests.e2e.agentproc import AgentProcess, Inbox, subscribe, write_config

pytestmark = pytest.mark.slow


def test_signed_restart_exits_75_unsigned_is_refused(tmp_path: Path, broker: Mosquitto) -> None:
    key_path, pub_path, _ = generate_key_pair(tmp_path / "keys")
    cfg = write_config(tmp_path / "config.yaml", {
        "device_id": "restart-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port},
        "metrics": {"prometheus": {"enabled": False}},
        "commands": {"public_keys": [str(pub_path)]},
        "pipelines": [{"name": "door", "source": {"type": "synthetic", "fps": 10},
                       "model": {"path": str(ensure_default_models()[DEFAULT_MODEL])}}],
    })
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["edge-agent/restart-1/#"], inbox)
    agent = AgentProcess(cfg)
    try:
        assert inbox.wait_for(lambda m: any("/results/" in t for t, _, _ in m), 60), agent.log()
        topic = "edge-agent/restart-1/cmd/restart"
        sub.publish(topic, json.dumps({"request_id": "unsigned", "reason": "x"}).encode())
        assert inbox.wait_for(lambda m: any(b'"unsigned"' in p for t, p, _ in m
                                            if t.endswith("/cmd/reply")), 20)
        assert agent.proc.poll() is None, "an unsigned restart must not stop the agent"
        signed = sign_command({"request_id": "r1", "command": "restart", "device": "restart-1",
                               "reason": "test"}, load_private_key(key_path))
        sub.publish(topic, json.dumps(signed).encode())
        agent.proc.wait(30)
    finally:
        code = agent.terminate()
        sub.stop()
    assert code == 75, agent.log()
    replies = {r["request_id"]: r for r in inbox.json("/cmd/reply")}
    assert replies["unsigned"]["ok"] is False
    assert replies["r1"]["ok"] is True, replies
    statuses = inbox.json("/status")
    assert statuses[-1]["state"] == "offline"
