"""The egress guard publishes only seal-issued messages, on the contract's topics."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge_agent.contract.messages import ResultMessage, StatusMessage
from edge_agent.privacy import messages, new_seal
from edge_agent.privacy.audit import read_entries
from edge_agent.privacy.egress import EgressGuard
from edge_agent.types import ModelRef
from tests.fakes import RecordingTransport
from tests.privacy.conftest import det, result
from tests.privacy.payload_checks import validate_payload


def _status(seal, state="online"):
    return messages.status(seal, device="dev-1", state=state, agent_version="0.1.0",
                           started_at=1_790_000_000.0,
                           pipelines=[{"name": "door", "state": "running",
                                       "model": {"name": "m", "version": 1}}],
                           runtime={"backend": "ai_edge_litert", "threads": 2},
                           boot_id="b1", outbox={"depth": 0})


def test_refuses_dicts_unsealed_foreign_and_edited_copies(guard, transport, seal):
    good = _status(seal)
    forged = [
        {"kind": "status", "payload": {"state": "online"}},
        StatusMessage(None, {"state": "online"}),
        StatusMessage(None, {"state": "online"}, seal=object()),
        _status(new_seal()),
        dataclasses.replace(good, payload={"state": "online", "image": "x"}),
        b"raw bytes",
    ]
    for msg in forged:
        assert guard.send(msg) is False  # type: ignore[arg-type]
    assert transport.messages == []
    c = guard.counters()
    assert c["refused"] == {"invalid": 2, "status": 4}
    assert c["refused_reasons"] == {"not_a_message:dict": 1, "not_a_message:bytes": 1,
                                    "unsealed": 1, "foreign_seal": 2, "not_issued": 1}
    assert guard.send(good) is True
    assert guard.send(good) is False  # each issued message goes out once


def test_refusal_logs_carry_no_content(guard, caplog):
    secret = "SECRET-PLATE-123"
    assert not guard.send({"text": secret})  # type: ignore[arg-type]
    assert not guard.send(ResultMessage("door", {"text": secret}))
    assert secret not in caplog.text
    assert "refused" in caplog.text


def test_every_kind_goes_to_its_topic_and_validates(guard, transport, seal, make_policy):
    policy = make_policy()
    sent = [
        _status(seal),
        messages.stats(seal, device="dev-1", uptime_s=12.5,
                       pipelines={"door": {"fps": 9.5, "privacy": policy.counters()}},
                       outbox={"depth": 1}, mqtt={"connected": True},
                       egress=guard.counters(), cpu_temp_c=51.2),
        messages.model_state(seal, device="dev-1", pipeline="door", state="active", name="m",
                             version=2, sha256="b" * 64, active=ModelRef("m", 2, "b" * 64),
                             previous={"name": "m", "version": 1, "sha256": "c" * 64}),
        messages.cmd_reply(seal, device="dev-1", request_id="r1", ok=False, error="bad sig"),
        messages.discovery(seal, "homeassistant/sensor/dev-1_door_person/config",
                           {"name": "door person", "unique_id": "dev-1_door_person",
                            "state_topic": "edge-agent/dev-1/results/door",
                            "value_template": "{{ value_json.counts.person | default(0) }}",
                            "device": {"identifiers": ["dev-1"], "name": "dev-1"}}),
        messages.discovery(seal, "homeassistant/sensor/dev-1_door_cat/config", None),
        policy.result(result(det())),
    ]
    for msg in sent:
        assert guard.send(msg), msg.kind
    topics = transport.topics()
    assert topics == [
        "edge-agent/dev-1/status", "edge-agent/dev-1/stats", "edge-agent/dev-1/model/door/state",
        "edge-agent/dev-1/cmd/reply", "homeassistant/sensor/dev-1_door_person/config",
        "homeassistant/sensor/dev-1_door_cat/config", "edge-agent/dev-1/results/door"]
    retained = [m.retain for m in transport.messages]
    assert retained == [True, False, True, False, True, True, False]
    assert transport.messages[5].payload == b""
    for m in transport.messages:
        validate_payload(m.topic, m.payload)
    res = json.loads(transport.messages[-1].payload)
    assert res["seq"] == 1 and res["id"] == transport.messages[-1].id
    assert transport.messages[-1].durable


def test_events_are_durable(guard, transport, make_policy):
    from edge_agent.types import TrackEvent

    ev = TrackEvent("door", 1_790_000_000.5, "enter", 4, "person", 0, 0.0, (0.1, 0.2, 0.3, 0.4))
    assert guard.send(make_policy().event(ev))
    m = transport.messages[0]
    assert m.topic == "edge-agent/dev-1/events/door" and m.durable
    assert validate_payload(m.topic, m.payload) == "event"


def test_schema_and_size_violations_are_refused(transport, audit, seal):
    guard = EgressGuard(transport, "p", "dev-1", audit, seal, limits={"cmd_reply": 200})
    deep = messages.status(seal, device="dev-1", state="online", agent_version="1",
                           started_at=None, pipelines=[{"name": "door",
                                                        "nested": {"too": {"deep": 1}}}])
    assert not guard.send(deep)
    long = messages.cmd_reply(seal, device="dev-1", request_id="r", ok=False, error="e" * 500)
    assert not guard.send(long)
    wrong_state = messages.model_state(seal, device="dev-1", pipeline="door", state="exploded",
                                       name="m", version=1, sha256="")
    assert not guard.send(wrong_state)
    bad_topic = messages.discovery(seal, "elsewhere/sensor/x/config", {"name": "x"})
    assert not guard.send(bad_topic)
    assert guard.counters()["refused_reasons"] == {"schema": 2, "too_large": 1, "bad_topic": 1}
    assert transport.messages == []
    refusals = [e for e in read_entries(audit.path.parent) if e["outcome"] == "refused"]
    assert len(refusals) == 4


def test_snapshot_data_must_be_jpeg_and_only_on_snapshots(guard, seal, transport):
    meta = {"schema": "edge-agent/snapshot-meta@1", "device": "dev-1", "pipeline": "door",
            "ts": "2026-11-28T12:00:00.000Z", "frame": {"index": 1, "width": 2, "height": 2},
            "size": 4, "sha256": "0" * 64, "faces_redacted": 0, "masks": 0, "width": 2,
            "height": 2}
    assert not guard.send(seal.issue("snapshot", "door", meta, data=b"\x89PNG\r\n\x1a\n"))
    with pytest.raises(TypeError, match="no data"):  # only a snapshot can carry bytes
        seal.issue("result", "door", {"x": 1}, data=b"\xff\xd8\xff\xd9")
    assert guard.counters()["refused_reasons"] == {"not_jpeg": 1}
    assert transport.messages == []


def test_will_is_the_offline_status(guard, transport, seal):
    assert not guard.set_will(_status(seal, "online"))
    assert guard.set_will(_status(seal, "offline"))
    topic, payload = transport.will
    assert topic == "edge-agent/dev-1/status"
    assert json.loads(payload)["state"] == "offline"


def test_transport_failure_is_counted_not_raised(seal, audit):
    transport = RecordingTransport(fail=True)
    guard = EgressGuard(transport, "p", "dev-1", audit, seal)
    assert not guard.send(messages.cmd_reply(seal, device="dev-1", request_id="r", ok=True))
    assert guard.counters()["refused_reasons"] == {"publish_failed": 1}


def test_audit_records_metadata_only(guard, audit, seal, make_policy):
    policy = make_policy()
    guard.send(policy.result(result(det(label="person"))))
    guard.send(_status(seal))
    entries = list(read_entries(audit.path.parent))
    assert [e["kind"] for e in entries] == ["result", "status"]
    assert entries[0]["topic"] == "edge-agent/dev-1/results/door"
    assert entries[0]["pipeline"] == "door" and entries[0]["size"] > 0
    text = audit.path.read_text()
    assert "person" not in text and "detections" not in text


@pytest.mark.parametrize("pipeline", ["a/b", "#", "+", "", None, "UPPER"])
def test_bad_pipeline_names_never_make_topics(guard, seal, transport, pipeline):
    msg = seal.issue("model_state", pipeline, {"state": "active"})
    assert not guard.send(msg)
    assert transport.messages == []


def test_home_assistant_discovery_configs_pass_the_guard(guard, transport, seal):
    """The mqtt area's discovery builders produce payloads our schema accepts."""
    from edge_agent.config import make_config
    from edge_agent.mqtt import discovery as mqtt_discovery

    cfg = make_config(device_id="dev-1",
                      homeassistant={"enabled": True, "labels": ["person", "car"]})
    configs = mqtt_discovery.discovery_configs(cfg)
    assert configs
    for topic, payload in configs:
        assert guard.send(messages.discovery(seal, topic, payload)), topic
    for m in transport.messages:
        assert validate_payload(m.topic, m.payload) == "discovery"


def test_a_late_message_is_never_refused_and_dropped_ones_are_freed(seal, guard, transport):
    # the old seal kept the newest 1,024 issued messages and refused older ones when sent late;
    # the weak registry keeps every message someone still holds, and only those
    first = messages.cmd_reply(seal, device="dev-1", request_id="0", ok=True)
    held = [messages.cmd_reply(seal, device="dev-1", request_id=str(i), ok=True)
            for i in range(3000)]
    for i in range(2000):
        messages.cmd_reply(seal, device="dev-1", request_id=f"dropped-{i}", ok=True)
    assert seal.pending == 3001  # the 2,000 nobody kept are gone already
    assert guard.send(first)  # made before 5,000 others: still accepted
    assert all(guard.send(m) for m in held[::500])
    assert len(transport.messages) == 7
    assert not guard.send(first)  # each issued message goes out once
    last = messages.cmd_reply(seal, device="dev-1", request_id="x", ok=True)
    seal.discard(last)
    assert not guard.send(last)
    assert guard.counters()["refused_reasons"] == {"not_issued": 2}


def test_a_look_alike_message_is_refused_counted_and_logged(seal, guard, transport, caplog):
    import dataclasses as dc

    from edge_agent.contract.messages import OutgoingMessage

    @dc.dataclass(frozen=True)
    class LookAlike(StatusMessage):  # same fields, same spec, the right seal
        pass

    @dc.dataclass(frozen=True)
    class Bare(OutgoingMessage):  # the base class itself is no message kind
        SPEC = StatusMessage.SPEC

    good = _status(seal)
    for fake in (LookAlike(None, good.payload, seal), Bare(None, good.payload, seal)):
        assert guard.send(fake) is False
    assert transport.messages == []
    assert guard.counters()["refused_reasons"] == {"not_a_message:LookAlike": 1,
                                                   "not_a_message:Bare": 1}
    assert caplog.text.count("egress refused") == 2
    assert guard.send(good)


def test_durable_bytes_are_the_head_then_the_policy_fields(guard, transport, seal, make_policy):
    # render() splices the serialised head in front of the body serialised once; the bytes
    # must be exactly those of serialising the merged object
    from edge_agent.privacy.egress import dumps
    from edge_agent.privacy.seal import thaw

    msg = make_policy().result(result(det(), det("car", 0.7), det(label="Zoë ☃")))
    expected = thaw(msg.payload)
    assert guard.send(msg)
    m = transport.messages[-1]
    head = {"schema": expected.pop("schema"), "id": m.id, "seq": m.seq,
            "boot_id": transport.boot_id}
    assert m.payload == dumps({**head, **expected})


def test_a_payload_repeating_a_head_key_is_still_rendered_as_one_object(guard, transport,
                                                                         seal):
    # not something the policy makes: the guard falls back to merging the dicts (the payload's
    # value wins, in the head's position), which the schema then judges as before
    payload = {"schema": "edge-agent/event@1", "seq": 7, "device": "dev-1"}
    assert not guard.send(seal.issue("event", "door", payload))
    assert guard.counters()["refused_reasons"] == {"schema": 1}
    assert transport.messages == []


def test_frozen_payloads_are_json_native_and_read_only(seal):
    from edge_agent.privacy.seal import thaw

    msg = seal.issue("stats", None, {"a": [1, {"b": (2.5, None)}], 3: "x"})
    p = msg.payload
    assert isinstance(p, dict) and isinstance(p["a"], list) and isinstance(p["a"][1]["b"], list)
    assert p == {"a": [1, {"b": [2.5, None]}], "3": "x"}
    for mutate in (lambda: p["a"].append(1), lambda: p["a"].__setitem__(0, 2),
                   lambda: p["a"][1].update(c=1), lambda: p["a"].extend([1]),
                   lambda: p["a"].sort(), lambda: p["a"].pop()):
        with pytest.raises(TypeError):
            mutate()
    plain = thaw(p)
    assert type(plain) is dict and type(plain["a"]) is list and type(plain["a"][1]) is dict
    assert type(plain["a"][1]["b"]) is list and plain == p
    plain["a"].append(4)  # a copy: the message is unchanged
    assert p["a"] == [1, {"b": [2.5, None]}]
