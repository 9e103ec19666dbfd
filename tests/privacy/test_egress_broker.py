"""The guard over the real MqttTransport and a real mosquitto: everything a subscriber to ``#``
sees is on a contract topic, validates, and (snapshots apart) carries no image data."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from edge_agent.config import make_config
from edge_agent.privacy import messages, new_seal
from edge_agent.privacy.audit import AuditLog
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.types import TrackEvent
from tests.privacy.conftest import det, result
from tests.privacy.payload_checks import assert_no_image_data, validate_payload


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_everything_on_the_wire_validates(broker, tmp_path: Path):
    from edge_agent.mqtt import client, subscriber
    cfg = make_config(device_id="dev-1", state_dir=str(tmp_path / "state"),
                      mqtt={"host": broker.host, "port": broker.port})
    seen: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        with lock:
            seen.append((topic, payload))

    sub = subscriber.Subscriber(broker.host, broker.port, ["#"], on_message)
    assert sub.start()
    transport = client.MqttTransport(cfg, tmp_path / "state")
    seal = new_seal()
    audit = AuditLog(tmp_path / "state" / "audit", cfg.audit)
    guard = EgressGuard(transport, cfg.mqtt.topic_prefix, cfg.device_id, audit, seal,
                        qos=cfg.mqtt.qos)
    try:
        assert guard.set_will(messages.status(seal, device="dev-1", state="offline",
                                              agent_version="0.1.0", started_at=None))
        transport.start()
        assert _wait(lambda: transport.stats()["connected"])
        policy = PrivacyPolicy(cfg.pipelines[0].privacy.model_copy(
            update={"publish_images": True, "redact_faces": False}), "cam", "dev-1", seal)
        image = np.full((120, 160, 3), 90, np.uint8)
        res = result(det(), det("car", box=(0.5, 0.5, 0.7, 0.9)), image=image)
        sent = [
            messages.status(seal, device="dev-1", state="online", agent_version="0.1.0",
                            started_at=time.time(), pipelines=[{"name": "cam",
                                                                "state": "running"}],
                            boot_id=transport.boot_id),
            policy.result(res),
            policy.event(TrackEvent("cam", time.time(), "enter", 1, "person", 0, 0.0,
                                    (0.1, 0.1, 0.3, 0.4))),
            messages.stats(seal, device="dev-1", pipelines={"cam": {"fps": 1.0,
                                                                    **policy.counters()}},
                           mqtt=transport.stats()),
            messages.cmd_reply(seal, device="dev-1", request_id="r1", ok=True),
        ]
        snap = policy.snapshot(res)
        assert snap is not None
        for msg in [*sent, snap]:
            assert guard.send(msg), msg.kind
        assert _wait(lambda: len(seen) >= 7), [t for t, _ in seen]
    finally:
        transport.stop(5.0)
        sub.stop()
        audit.close()
    kinds = []
    for topic, payload in seen:
        kind = validate_payload(topic, payload)
        kinds.append(kind)
        if kind != "snapshot_jpeg":
            assert_no_image_data(payload)
    assert sorted(kinds) == sorted(["status", "result", "event", "stats", "cmd_reply",
                                    "snapshot_jpeg", "snapshot"])
    results = [json.loads(p) for t, p in seen if t.endswith("/results/cam")]
    assert results[0]["seq"] == 1 and len(results[0]["id"]) == 32
    assert guard.counters()["refused"] == {}
