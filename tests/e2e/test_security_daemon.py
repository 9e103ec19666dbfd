"""Attacks on the running daemon from the broker and the LAN (issue 12), against ``edge-agent
run`` as a process and a real mosquitto:

* a flood of held connections on ``/metrics`` under a low file-descriptor limit: the agent
  keeps publishing, scrapes work again afterwards, and the log says connections were refused;
* stream credentials in a camera URL (query parameters, userinfo with ``@`` in the password)
  never reach the retained status or the log;
* junk commands: an oversized rollback is refused before parsing with the limit in the reply;
  a packet above the MQTT 5 Maximum Packet Size announced at CONNECT never reaches the agent;
  a ``request_id`` with a newline cannot forge a log line; a lone surrogate in a manifest or a
  signed command gets a reply, not a traceback.
"""

from __future__ import annotations

import json
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from edge_agent.signing import generate_key_pair
from tests.broker import Mosquitto, free_port
from tests.e2e.agentproc import AgentProcess, Inbox, subscribe, write_config

pytestmark = pytest.mark.slow

DEVICE = "sec-1"
PREFIX = f"edge-agent/{DEVICE}"


@contextmanager
def _nofile(limit: int) -> Iterator[None]:
    """Children started inside inherit a soft RLIMIT_NOFILE of ``limit``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _config(tmp: Path, broker: Mosquitto, **extra: Any) -> Path:
    _, pub, _ = generate_key_pair(tmp / "keys")
    return write_config(tmp / "config.yaml", {
        "device_id": DEVICE,
        "state_dir": str(tmp / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": 1},
        "updates": {"public_keys": [str(pub)]},
        "pipelines": [{"name": "door", "source": {"type": "synthetic", "fps": 20},
                       "model": {"path": str(ensure_default_models()[DEFAULT_MODEL])}}],
        **extra,
    })


def _n(messages: list[tuple[str, bytes, bool]], suffix: str) -> int:
    """Messages on topics ending with ``suffix`` (inside ``Inbox.wait_for``: lock held)."""
    return sum(1 for t, _, _ in messages if t.endswith(suffix))


def _replies(messages: list[tuple[str, bytes, bool]]) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p, _ in messages if t.endswith("/cmd/reply") and p]


def test_metrics_connection_flood_is_contained(tmp_path: Path, broker: Mosquitto) -> None:
    port = free_port()
    cfg = _config(tmp_path, broker,
                  metrics={"prometheus": {"bind": "127.0.0.1", "port": port}})
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, [f"{PREFIX}/#"], inbox)
    with _nofile(256):
        agent = AgentProcess(cfg)
    held: list[socket.socket] = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 and hard >= 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    try:
        assert inbox.wait_for(lambda m: any("/results/" in t for t, _, _ in m), 60), agent.log()
        before = inbox.count("/results/door")
        stats_before = inbox.count("/stats")
        for _ in range(600):  # more than the agent's 256 descriptors
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(s)
        time.sleep(4)  # held: the agent must go on publishing results and stats meanwhile
        assert agent.proc.poll() is None, agent.log()
        assert inbox.wait_for(lambda m: _n(m, "/results/door") > before + 20, 20), \
            agent.log()
        assert inbox.wait_for(lambda m: _n(m, "/stats") > stats_before + 1, 20), \
            agent.log()
        for s in held:
            s.close()
        held.clear()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.status == 200 and b"edge_agent_" in resp.read()
        assert agent.proc.poll() is None, agent.log()
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        code = agent.terminate()
        sub.stop()
    log = agent.log()
    assert code == 0, log
    # a held connection over the cap is refused at once (not left to time out), logged
    assert "connections refused so far (over the cap of 16 at once)" in log, log[-3000:]
    assert "Traceback" not in log and "Too many open files" not in log, log


def _reply(inbox: Inbox, rid: str, timeout: float = 20) -> dict[str, Any]:
    def found(m: list[tuple[str, bytes, bool]]) -> bool:
        return any(r.get("request_id") == rid for r in _replies(m))
    assert inbox.wait_for(found, timeout), f"no reply to {rid!r}"
    return next(r for r in inbox.json("/cmd/reply") if r.get("request_id") == rid)


def test_junk_commands_are_refused_cheaply_and_safely(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = _config(tmp_path, broker, metrics={"prometheus": {"enabled": False}},
                  commands={"max_payload_bytes": 1024 * 1024})
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, [f"{PREFIX}/cmd/reply", f"{PREFIX}/results/door"],
                    inbox)
    agent = AgentProcess(cfg)
    try:
        assert inbox.wait_for(lambda m: any("/results/" in t for t, _, _ in m), 60), agent.log()

        # 200 KB of JSON array on a rollback: refused by size at intake, before parsing
        junk = json.dumps(list(range(40_000))).encode()
        assert len(junk) > 100_000
        sub.publish(f"{PREFIX}/cmd/rollback", junk)
        assert inbox.wait_for(lambda m: any(
            "oversized" in str(r.get("error")) and "limit of 16384" in str(r.get("error"))
            for r in _replies(m)), 20), agent.log()

        # above the Maximum Packet Size announced at CONNECT: the broker never delivers it
        huge = b'{"request_id": "huge", "pipeline": "door", "manifest": {}, "data": "' + \
            b"A" * (2 * 1024 * 1024) + b'"}'
        sub.publish(f"{PREFIX}/cmd/model/update", huge)
        # a newline in request_id would forge a log line: not echoed, not logged raw
        forged = "r1\nWARNING edge_agent.updater: model FORGED swapped in"
        sub.publish(f"{PREFIX}/cmd/rollback",
                    json.dumps({"request_id": forged, "pipeline": "door"}).encode())
        # a lone surrogate inside a manifest: a reply, not a traceback
        manifest = ('{"schema": "edge-agent/model-manifest@1", "name": "m", "version": 1, '
                    '"sha256": "' + "0" * 64 + '", "size": 1, "created": "\\ud800", '
                    '"key_id": "k", "signature": "s"}')
        sub.publish(f"{PREFIX}/cmd/model/update",
                    ('{"request_id": "surrogate", "pipeline": "door", "manifest": ' + manifest
                     + ', "data": "AA=="}').encode())
        # ... and inside a signed command's fields
        sub.publish(f"{PREFIX}/cmd/restart",
                    b'{"request_id": "surrogate-2", "reason": "\\udc00", "ts": 1, '
                    b'"nonce": "nnnnnnnnnn", "key_id": "0000000000000000", "signature": "AA=="}')
        sub.publish(f"{PREFIX}/cmd/rollback", b'{"request_id": "last", "pipeline": "door"}')

        assert _reply(inbox, "last")["ok"] is False  # unsigned: refused; proves order
        sur = _reply(inbox, "surrogate")
        assert sur["ok"] is False and "not valid UTF-8" in sur["error"], sur
        sur2 = _reply(inbox, "surrogate-2")
        assert sur2["ok"] is False, sur2
        assert not any(r.get("request_id") == "huge" for r in inbox.json("/cmd/reply"))
        assert not any("FORGED" in str(r.get("request_id")) for r in inbox.json("/cmd/reply"))
        assert any("request_id: 1-128 printable" in str(r.get("error"))
                   for r in inbox.json("/cmd/reply"))
        assert agent.proc.poll() is None, agent.log()
    finally:
        code = agent.terminate()
        sub.stop()
    log = agent.log()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert not any(line.startswith("WARNING edge_agent.updater: model FORGED")
                   for line in log.splitlines()), log
    assert "FORGED" not in log, log
    assert "command None refused: oversized" in log, log


def test_stream_credentials_never_reach_status_or_log(tmp_path: Path, broker: Mosquitto) -> None:
    closed = free_port()  # nothing listens: the sources fail and say so in the status
    model = str(ensure_default_models()[DEFAULT_MODEL])
    cfg = _config(tmp_path, broker, metrics={"prometheus": {"enabled": False}})
    config = yaml.safe_load(cfg.read_text())
    config["pipelines"] = [
        {"name": "query", "model": {"path": model},
         "source": {"type": "camera",
                    "uri": f"http://127.0.0.1:{closed}/snap.cgi?user=admin&pwd=Qx7SECRETpw"}},
        {"name": "userinfo", "model": {"path": model},
         "source": {"type": "camera", "uri": f"rtsp://admin:pa@ss9SECRET@127.0.0.1:{closed}/s"}},
    ]
    write_config(cfg, config)
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, [f"{PREFIX}/status"], inbox)
    agent = AgentProcess(cfg)
    try:
        def failing(m: list[tuple[str, bytes, bool]]) -> bool:
            for t, p, _ in m:
                if t.endswith("/status") and p:
                    errors = [x.get("source_error") for x in json.loads(p).get("pipelines", [])]
                    if len(errors) == 2 and all(errors):
                        return True
            return False
        assert inbox.wait_for(failing, 60), agent.log()
    finally:
        code = agent.terminate()
        sub.stop()
    log = agent.log()
    assert code == 0, log
    status = [p.decode() for t, p, _ in inbox.messages if t.endswith("/status") and p]
    text = "\n".join(status) + log
    assert "snap.cgi?user=***&pwd=***" in text, text[-3000:]
    assert "rtsp://***@127.0.0.1" in text, text[-3000:]
    for secret in ("Qx7SECRETpw", "ss9SECRET", "admin"):
        assert secret not in text, (secret, text[-3000:])


def test_remote_config_cannot_weaken_privacy_or_defences(tmp_path: Path,
                                                         broker: Mosquitto) -> None:
    from edge_agent.signing import load_private_key, sign_command

    cfg = _config(tmp_path, broker, metrics={"prometheus": {"enabled": False}})
    base = yaml.safe_load(cfg.read_text())
    base["commands"] = {"public_keys": base["updates"]["public_keys"]}
    write_config(cfg, base)
    key = load_private_key(tmp_path / "keys" / "signing.key")
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, [f"{PREFIX}/cmd/reply", f"{PREFIX}/results/#",
                                               f"{PREFIX}/snapshots/#"], inbox)
    agent = AgentProcess(cfg)

    def send(rid: str, config: dict[str, Any]) -> dict[str, Any]:
        body = sign_command({"request_id": rid, "command": "config", "device": DEVICE,
                             "config": yaml.safe_dump(config)}, key)
        sub.publish(f"{PREFIX}/cmd/config", json.dumps(body).encode())
        return _reply(inbox, rid, 30)

    def pipeline(**privacy: Any) -> list[dict[str, Any]]:
        return [dict(base["pipelines"][0], privacy=privacy)]

    try:
        assert inbox.wait_for(lambda m: any("/results/" in t for t, _, _ in m), 60), agent.log()
        attacks = {
            "faces": dict(base, pipelines=pipeline(publish_images=True, redact_faces=False,
                                                   allow_unredacted_images=True)),
            "signatures": dict(base, commands=dict(base["commands"], require_signature=False)),
            "audit": dict(base, audit={"enabled": False}),
            "broker": dict(base, mqtt=dict(base["mqtt"], host="127.0.0.2")),
            "keys": dict(base, updates={"public_keys": []}),
        }
        words = {"faces": "pipelines.door.privacy.publish_images",
                 "signatures": "commands.require_signature", "audit": "audit.enabled",
                 "broker": "mqtt.host", "keys": "updates.public_keys"}
        for rid, config in attacks.items():
            reply = send(rid, config)
            assert reply["ok"] is False, reply
            assert "a remote config command may not change" in reply["error"], reply
            assert words[rid] in reply["error"], reply
        assert yaml.safe_load(cfg.read_text()) == base, "the file is unchanged"
        # an ordinary change still applies, and is audited with the key that signed it
        calm = dict(base, pipelines=[dict(base["pipelines"][0],
                                          source={"type": "synthetic", "fps": 10})])
        assert send("calm", calm)["ok"] is True
        time.sleep(1)
        assert not any("/snapshots/" in t for t, _, _ in inbox.messages)
    finally:
        code = agent.terminate()
        sub.stop()
    log = agent.log()
    assert code == 0, log
    assert "config command (key " in log and "refused: it changes" in log, log
    audit = [json.loads(line) for line in
             (tmp_path / "state" / "audit" / "audit.log").read_text().splitlines()]
    configs = [a for a in audit if a["kind"] == "config"]
    kid = key_id_of_pub(tmp_path / "keys" / "signing.pub")
    assert sum(a["outcome"] == "refused" for a in configs) == 5, configs
    assert any(a["outcome"] == "applied" and kid in a["reason"] for a in configs), configs


def key_id_of_pub(path: Path) -> str:
    from edge_agent.signing import key_id, parse_public_key

    return key_id(parse_public_key(path.read_text()))


def test_local_opt_ins_are_explicit_and_reported(tmp_path: Path, broker: Mosquitto) -> None:
    model = str(ensure_default_models()[DEFAULT_MODEL])
    cfg = _config(tmp_path, broker, metrics={"prometheus": {"enabled": False}})
    base = yaml.safe_load(cfg.read_text())
    # raw outputs of an image model without the opt-in: the daemon refuses to start (78)
    write_config(cfg, dict(base, pipelines=[{"name": "door", "source": {"type": "synthetic"},
                                             "model": {"path": model, "decoder": "raw"}}]))
    agent = AgentProcess(cfg)
    assert agent.proc.wait(60) == 78, agent.log()
    assert "allow_raw_image_outputs" in agent.log()
    # unredacted snapshots without the opt-in: a config error naming the opt-in
    write_config(cfg, dict(base, pipelines=[dict(base["pipelines"][0], privacy={
        "publish_images": True, "redact_faces": False})]))
    agent = AgentProcess(cfg)
    assert agent.proc.wait(60) == 78, agent.log()
    assert "allow_unredacted_images" in agent.log()
    # with the opt-in: snapshots say redaction is off (not "0 faces found"), the log and the
    # audit record the opt-in
    write_config(cfg, dict(base, pipelines=[dict(base["pipelines"][0], privacy={
        "publish_images": True, "redact_faces": False, "allow_unredacted_images": True,
        "snapshots_per_minute": 600})]))
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, [f"{PREFIX}/snapshots/#"], inbox)
    agent = AgentProcess(cfg)
    try:
        def meta(m: list[tuple[str, bytes, bool]]) -> bool:
            return any(t.endswith("/meta") for t, _, _ in m)
        assert inbox.wait_for(meta, 60), agent.log()
    finally:
        code = agent.terminate()
        sub.stop()
    assert code == 0, agent.log()
    metas = [json.loads(p) for t, p, _ in inbox.messages if t.endswith("/meta")]
    assert metas and all(m["face_redaction"] == "off" and m["faces_redacted"] is None
                         for m in metas), metas
    assert "opt-in in the local config: pipelines.door.privacy: unredacted images" in agent.log()
    audit = (tmp_path / "state" / "audit" / "audit.log").read_text()
    assert '"outcome":"opt_in"' in audit and "unredacted images" in audit
