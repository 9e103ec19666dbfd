"""The consumer library reads a target_changed event as the policy makes it."""

from __future__ import annotations

import json

from edge_agent.config import PrivacyConfig
from edge_agent.consumer.messages import parse_event
from edge_agent.privacy import new_seal
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.privacy.schemas import validate
from edge_agent.types import TargetChange


def test_target_changed_round_trip() -> None:
    policy = PrivacyPolicy(PrivacyConfig(), "door", "pi-1", new_seal())
    msg = policy.target_event(TargetChange("edgetpu", "cpu", "invoke hung (no answer within 2s)",
                                           1_764_000_000.0))
    payload = {**dict(msg.payload), "id": "a1", "seq": 7}  # what the outbox adds
    validate("event", payload)
    ev = parse_event(json.dumps(payload).encode())
    assert (ev.event, ev.target_from, ev.target_to) == ("target_changed", "edgetpu", "cpu")
    assert ev.reason == "invoke hung (no answer within 2s)"
    assert ev.track_id is None and ev.label is None and ev.seq == 7
