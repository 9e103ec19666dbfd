"""Keys, canonical JSON, manifests and signed commands."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edge_agent.errors import ConfigError, UpdateError
from edge_agent.signing import (
    canonical_json,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_keys,
    raw_public_bytes,
    sign_command,
    verify_command,
)
from edge_agent.updater.manifest import build_manifest, parse_manifest, verify_manifest


def test_keygen_files(tmp_path: Path) -> None:
    priv, pub, kid = generate_key_pair(tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    key = load_private_key(priv)
    assert len(pub.read_text().strip()) == 44  # base64 of 32 bytes
    assert kid == hashlib.sha256(raw_public_bytes(key.public_key())).hexdigest()[:16]
    assert key_id(key.public_key()) == kid
    with pytest.raises(UpdateError, match="already exists"):
        generate_key_pair(tmp_path / "k")


def test_public_keys_in_both_formats(tmp_path: Path) -> None:
    priv, pub, kid = generate_key_pair(tmp_path / "k")
    pem = tmp_path / "k.pem"
    pem.write_bytes(load_private_key(priv).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert set(load_public_keys([pub])) == {kid} == set(load_public_keys([pem]))
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"bad\.pub"):
        load_public_keys([bad, tmp_path / "absent.pub"])


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": "é", "c": [1, {"z": 0, "y": 1}]}) == \
        '{"a":"é","b":1,"c":[1,{"y":1,"z":0}]}'.encode()


def test_manifest_round_trip_and_tamper(tmp_path: Path) -> None:
    priv, pub, kid = generate_key_pair(tmp_path / "k")
    keys = load_public_keys([pub])
    m = build_manifest(name="det", version=2, sha256="a" * 64, size=10,
                       key=load_private_key(priv), labels="person\ncar\n")
    again = parse_manifest(m.to_json())
    assert verify_manifest(again, keys) == kid
    assert again.labels_sha256 == hashlib.sha256(b"person\ncar\n").hexdigest()
    tampered = dict(m.raw, labels="person\ntruck\n")
    with pytest.raises(UpdateError, match="labels do not match"):
        parse_manifest(tampered)
    with pytest.raises(UpdateError, match="bad signature"):
        verify_manifest(parse_manifest(dict(m.raw, url="http://evil/")), keys)


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "x" * 200, "a b", 5])
def test_manifest_names_are_strict(name: object) -> None:
    obj = {"schema": "edge-agent/model-manifest@1", "name": name, "version": 1,
           "sha256": "a" * 64, "size": 1}
    with pytest.raises(UpdateError, match="invalid name"):
        parse_manifest(obj)


@pytest.mark.parametrize("field,value", [("version", -1), ("version", True), ("size", 0),
                                         ("sha256", "A" * 64), ("url", 3)])
def test_manifest_fields_are_strict(field: str, value: object) -> None:
    obj = {"schema": "edge-agent/model-manifest@1", "name": "m", "version": 1,
           "sha256": "a" * 64, "size": 1, field: value}
    with pytest.raises(UpdateError):
        parse_manifest(obj)


def test_signed_command(tmp_path: Path) -> None:
    priv, pub, kid = generate_key_pair(tmp_path / "k")
    keys = load_public_keys([pub])
    cmd = sign_command({"request_id": "r", "pipeline": "door"}, load_private_key(priv))
    assert verify_command(cmd, keys, max_skew_s=60) == kid
    with pytest.raises(UpdateError, match="off"):
        verify_command(cmd, keys, max_skew_s=60, now=cmd["ts"] + 3600)
    with pytest.raises(UpdateError, match="bad signature"):
        verify_command(dict(cmd, pipeline="other"), keys, max_skew_s=60)
