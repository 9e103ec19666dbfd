"""The manifest contract: one table drives parse_manifest and docs/schemas/model_manifest.json."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft202012Validator

from edge_agent.contract.manifest import FIELDS, json_schema
from edge_agent.errors import UpdateError
from edge_agent.updater.manifest import Manifest, TargetFile, build_manifest, parse_manifest

SHA = "a" * 64


def _signed() -> Manifest:
    return build_manifest(name="det", version=3, sha256=SHA, size=10,
                          key=Ed25519PrivateKey.generate(), url="https://x/m.tflite",
                          labels="a\nb", targets={"edgetpu": TargetFile("b" * 64, 11)},
                          extra={"pipeline": ["door", "yard"], "device": "pi-1",
                                 "group": ["lab"], "decoder": "ssd", "newer_field": 1,
                                 "shadow": {"frames": 50, "min_recall": 0.9,
                                            "max_latency_ratio": 1.5}})


def test_every_field_fills_a_manifest_attribute_and_every_attribute_has_a_field():
    attrs = {f.name for f in dataclasses.fields(Manifest)} - {"raw"}
    assert {f.attr for f in FIELDS if f.attr is not None} == attrs
    assert len({f.key for f in FIELDS}) == len(FIELDS)


def test_a_signed_manifest_with_every_field_parses_and_matches_the_schema():
    manifest = _signed()
    validator = Draft202012Validator(json_schema())
    Draft202012Validator.check_schema(json_schema())
    assert list(validator.iter_errors(dict(manifest.raw))) == []
    assert manifest.pipelines == ("door", "yard") and manifest.devices == ("pi-1",)
    assert manifest.groups == ("lab",) and manifest.decoder == "ssd"
    assert manifest.targets == {"edgetpu": TargetFile("b" * 64, 11)}
    assert manifest.labels_sha256 == hashlib.sha256(b"a\nb").hexdigest()
    assert manifest.raw["newer_field"] == 1  # unknown fields are kept and signed


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": "x"}, "manifest schema must be"),
    ({"name": "../x"}, "invalid name '../x'"),
    ({"version": True}, "manifest version must be an integer >= 0, got True"),
    ({"size": 0}, "manifest size must be an integer >= 1, got 0"),
    ({"sha256": "A" * 64}, "manifest sha256 must be 64 lowercase hex characters"),
    ({"url": ""}, "manifest url must be a non-empty string"),
    ({"labels_sha256": "c" * 64}, "labels do not match labels_sha256"),
    ({"allow_downgrade": 1}, "manifest allow_downgrade must be true or false"),
    ({"created": 5}, "manifest created must be a string"),
    ({"targets": {"EdgeTPU": {}}}, "manifest targets: invalid target name 'EdgeTPU'"),
    ({"targets": {"tpu": {"sha256": SHA, "size": 0}}}, "manifest targets.tpu.size must be"),
    ({"decoder": "s d"}, "manifest decoder must be a decoder kind"),
    ({"pipeline": []}, "manifest pipeline must be a name or a non-empty list of names"),
    ({"group": [""]}, "manifest group must be a name or a non-empty list of names"),
])
def test_each_bad_field_is_refused_by_the_parser_and_by_the_published_schema(change, message):
    obj = {**_signed().raw, **change}
    with pytest.raises(UpdateError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_manifest(obj)
    if "labels_sha256" not in change:  # a hash mismatch is beyond JSON Schema
        assert list(Draft202012Validator(json_schema()).iter_errors(obj)), change


def test_the_published_shadow_gate_schema_matches_the_gate_the_device_parses():
    from edge_agent.shadow import ShadowGate

    validator = Draft202012Validator(json_schema())
    base = dict(_signed().raw)
    for gate in ({"frames": 0}, {"frames": 5, "min_recall": 1.5}, {"frames": 5, "x": 1}, []):
        assert list(validator.iter_errors({**base, "shadow": gate})), gate
        with pytest.raises(UpdateError):
            ShadowGate.parse(gate)
    gate = {"frames": 10**7, "min_precision": 0, "max_latency_ratio": 1000}
    assert list(validator.iter_errors({**base, "shadow": gate})) == []
    assert ShadowGate.parse(gate).frames == 10**7
