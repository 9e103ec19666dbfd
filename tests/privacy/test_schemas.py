"""The shipped JSON Schemas: valid, complete, identical in docs/, and closed to extra fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from edge_agent.contract.messages import MessageKind
from edge_agent.errors import PublishError
from edge_agent.privacy import messages
from edge_agent.privacy.schemas import SCHEMA_FILES, load_schema, validate
from tests.conftest import need_module

REPO = Path(__file__).resolve().parents[2]


def test_every_message_kind_has_a_valid_schema():
    assert set(SCHEMA_FILES) == set(MessageKind.__args__)  # type: ignore[attr-defined]
    for kind in SCHEMA_FILES:
        Draft202012Validator.check_schema(load_schema(kind))


def test_docs_schemas_are_generated_from_the_contract_and_not_stale():
    from edge_agent.contract.schemagen import render

    docs = REPO / "docs" / "schemas"
    from edge_agent.contract.commands import COMMANDS
    from edge_agent.contract.manifest import SCHEMA_FILE

    want = render()
    assert set(want) == set(SCHEMA_FILES.values()) | {c.file for c in COMMANDS} | {SCHEMA_FILE}
    assert {p.name for p in docs.glob("*.json")} == set(want)
    for name, text in want.items():
        assert (docs / name).read_text("utf-8") == text, (
            f"docs/schemas/{name} is stale: run python -m edge_agent.contract.schemagen")
        doc = json.loads(text)
        Draft202012Validator.check_schema(doc)
        if (name.startswith("cmd_") and name != "cmd_reply.json") or name == SCHEMA_FILE:
            continue
        shipped = json.loads((REPO / "edge_agent" / "schemas" / name).read_text("utf-8"))
        assert {k: v for k, v in doc.items() if k != "x-edge-agent"} == shipped


def test_package_schemas_are_generated_from_the_payload_models_and_not_stale():
    from edge_agent.contract.messages import SPECS
    from edge_agent.contract.payloads import PAYLOADS
    from edge_agent.contract.schemagen import render_package

    assert set(PAYLOADS) == set(SPECS)  # every kind has its typed payload model
    want = render_package()
    assert set(want) == set(SCHEMA_FILES.values())
    for name, text in want.items():
        assert (REPO / "edge_agent" / "schemas" / name).read_text("utf-8") == text, (
            f"edge_agent/schemas/{name} is stale: run python -m edge_agent.contract.schemagen")


def test_design_example_result_validates():
    example = {"schema": "edge-agent/result@1", "id": "abc", "seq": 42, "device": "pi-door-1",
               "pipeline": "door", "ts": "2026-11-28T12:00:00.123Z",
               "model": {"name": "detector", "version": 0, "sha256": "e" * 64},
               "frame": {"index": 4567, "width": 1280, "height": 720}, "inference_ms": 11.8,
               "detections": [{"label": "person", "class_id": 0, "score": 0.87,
                               "box": [0.12, 0.30, 0.45, 0.98]}],
               "counts": {"person": 1}}
    validate("result", example)
    for extra in ({"image": "..."}, {"jpeg": "..."}):
        with pytest.raises(PublishError):
            validate("result", {**example, **extra})
    with pytest.raises(PublishError):
        validate("result", {**example, "values": [0.0] * 1001})
    with pytest.raises(PublishError):
        validate("result", {**example, "detections": [{**example["detections"][0],
                                                       "crop": "AAAA"}]})


def test_factories_validate(seal):
    for msg in [
        messages.status(seal, device="d", state="offline", agent_version="1", started_at=None),
        messages.stats(seal, device="d", pipelines={}),
        messages.model_state(seal, device="d", pipeline="p", state="rolled_back", name="m",
                             version=0, sha256="", reason="watch failed", progress=0.5),
        messages.cmd_reply(seal, device="d", request_id="1", ok=True),
    ]:
        validate(msg.kind, json.loads(json.dumps(msg.payload)))


MUTATIONS = [
    lambda p: p.update(image="x"),
    lambda p: p.update(seq=-1),
    lambda p: p.update(ts="2026-11-28 12:00:00"),
    lambda p: p.update(values=[0.5] * 1001),
    lambda p: p["detections"][0].update(score=1.5) if p.get("detections") else p.pop("counts"),
    lambda p: p["detections"][0].update(box=[0, 0, 1]) if p.get("detections") else p.pop("ts"),
    lambda p: p["model"].update(sha256="XYZ"),
    lambda p: p["counts"].update(person=-1),
    lambda p: p.update(schema="edge-agent/result@2"),
    lambda p: p.pop("id"),
]


@pytest.mark.parametrize("mutation", range(len(MUTATIONS)))
def test_fast_and_reference_validators_agree(make_policy, mutation):
    from edge_agent.privacy.egress import dumps
    from edge_agent.privacy.schemas import fast_validator, validator
    from edge_agent.privacy.seal import thaw
    from tests.privacy.conftest import det, result

    fast = fast_validator("result")
    if fast is None:
        need_module("fastjsonschema")  # a dependency: a missing one fails under CI
    payload = json.loads(dumps({"id": "i", "seq": 1,
                                **thaw(make_policy().result(result(det())).payload)}))
    assert validator("result").is_valid(payload)
    fast(payload)
    MUTATIONS[mutation](payload)
    assert not validator("result").is_valid(payload)
    with pytest.raises(Exception, match="must"):
        fast(payload)
    with pytest.raises(PublishError):
        validate("result", payload)


def test_replayed_results_still_validate(make_policy):
    """The outbox marks re-sent results with ``"replayed": true``; the schema allows it."""
    from edge_agent.mqtt import client
    from edge_agent.privacy.egress import dumps
    from tests.privacy.conftest import det, result

    body = dumps({"id": "i", "seq": 3, **make_policy().result(result(det())).payload})
    validate("result", json.loads(client.mark_replayed(body)))
