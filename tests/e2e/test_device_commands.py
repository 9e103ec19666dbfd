"""A signed ``restart`` command: the agent replies, stops cleanly and exits 75 (EX_TEMPFAIL),
so systemd's ``Restart=on-failure`` starts it again; an unsigned one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from edge_agent.mqtt.signed import sign_command
from edge_agent.signing import generate_key_pair, load_private_key
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


def test_signed_config_command_validates_then_replaces_and_reloads(
        tmp_path: Path, broker: Mosquitto) -> None:
    key_path, pub_path, _ = generate_key_pair(tmp_path / "keys")
    model = str(ensure_default_models()[DEFAULT_MODEL])
    base = {
        "device_id": "config-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port},
        "metrics": {"prometheus": {"enabled": False}},
        "commands": {"public_keys": [str(pub_path)]},
        "pipelines": [{"name": "door", "source": {"type": "synthetic", "fps": 10},
                       "model": {"path": model}}],
    }
    cfg = write_config(tmp_path / "config.yaml", base)
    key = load_private_key(key_path)
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["edge-agent/config-1/#"], inbox)
    agent = AgentProcess(cfg)
    topic = "edge-agent/config-1/cmd/config"

    def send(rid: str, text: str) -> dict[str, object]:
        body = sign_command({"request_id": rid, "command": "config", "device": "config-1",
                             "config": text}, key)
        sub.publish(topic, json.dumps(body).encode())
        assert inbox.wait_for(lambda m: any(f'"{rid}"'.encode() in p for t, p, _ in m
                                            if t.endswith("/cmd/reply")), 30), agent.log()
        return next(r for r in inbox.json("/cmd/reply") if r["request_id"] == rid)

    try:
        assert inbox.wait_for(lambda m: any("/results/door" in t for t, _, _ in m), 60)
        bad = dict(base, pipelines=[{"name": "door", "source": {"type": "synthetic"},
                                     "model": {"path": "missing.tflite"}}])
        reply = send("bad", yaml.safe_dump(bad))
        assert reply["ok"] is False and "pipelines[0].model.path" in str(reply["error"])
        assert cfg.read_text() == yaml.safe_dump(base, sort_keys=False), "file unchanged"

        good = dict(base, pipelines=[*base["pipelines"],  # type: ignore[list-item]
                                     {"name": "yard", "source": {"type": "synthetic", "fps": 5},
                                      "model": {"path": model}}])
        reply = send("good", yaml.safe_dump(good))
        assert reply["ok"] is True, reply
        assert inbox.wait_for(lambda m: any("/results/yard" in t for t, _, _ in m), 60), \
            agent.log()
        assert (tmp_path / "config.yaml.previous").exists()
        assert "yard" in cfg.read_text()
        assert agent.proc.poll() is None, "applied without a restart"
    finally:
        code = agent.terminate()
        sub.stop()
    assert code == 0, agent.log()
