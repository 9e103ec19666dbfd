"""Command parsing, signatures, replay protection and fuzzing of the dispatcher."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import AgentConfig, make_config
from edge_agent.errors import ConfigError
from edge_agent.mqtt.commands import (
    DEFERRED,
    NONCE_FILE,
    Command,
    CommandDispatcher,
    canonical_json,
    key_id_of,
    load_public_key,
    sign_command,
)

PREFIX = "edge-agent/test-device/cmd/"
NOW = 1_800_000_000.0


class Recorder:
    """Records replies and handled commands (a fake, not a mock)."""

    def __init__(self) -> None:
        self.replies: list[tuple[str | None, bool, str | None]] = []
        self.handled: list[Command] = []
        self.lock = threading.Lock()

    def reply(self, request_id: str | None, ok: bool, error: str | None) -> None:
        with self.lock:
            self.replies.append((request_id, ok, error))

    def handler(self, command: Command) -> None:
        self.handled.append(command)

    def deferred(self, command: Command) -> Any:
        self.handled.append(command)
        return DEFERRED


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_pub(key: Ed25519PrivateKey, path: Path, pem: bool = False) -> Path:
    pub = key.public_key()
    if pem:
        path.write_bytes(pub.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        path.write_text(base64.b64encode(raw).decode() + "\n")
    return path


def make_dispatcher(tmp_path: Path, key: Ed25519PrivateKey, rec: Recorder,
                    **commands: Any) -> CommandDispatcher:
    pub = write_pub(key, tmp_path / "signing.pub")
    cfg: AgentConfig = make_config(state_dir=str(tmp_path), commands={"public_keys": [str(pub)],
                                                                      **commands},
                                   mqtt={"groups": ["lobby"]})
    handlers = {"rollback": rec.handler, "restart": rec.handler, "config": rec.handler,
                "model/update": rec.deferred}
    return CommandDispatcher(cfg, handlers, rec.reply, clock=lambda: NOW)


def signed(key: Ed25519PrivateKey, **fields: Any) -> bytes:
    return json.dumps(sign_command({"ts": NOW, **fields}, key)).encode()


def test_key_formats_and_key_id(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    raw = write_pub(key, tmp_path / "a.pub")
    pem = write_pub(key, tmp_path / "b.pem", pem=True)
    assert key_id_of(load_public_key(raw)) == key_id_of(load_public_key(pem))
    assert len(key_id_of(key.public_key())) == 16
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "bad.pub")


def test_canonical_json_leaves_out_signature() -> None:
    assert canonical_json({"b": 1, "a": "é", "signature": "x"}) == '{"a":"é","b":1}'.encode()


def test_signed_rollback_is_accepted_once(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec)
    payload = signed(key, request_id="r1", pipeline="cam", command="rollback",
                     device="test-device")
    d.handle(PREFIX + "rollback", payload)
    assert rec.replies == [("r1", True, None)]
    assert rec.handled[0].pipeline == "cam" and rec.handled[0].key_id == key_id_of(
        key.public_key())
    d.handle(PREFIX + "rollback", payload)  # replay
    assert rec.replies[-1][:2] == ("r1", False) and "replay" in str(rec.replies[-1][2])
    # a restart does not re-open the window: the nonce cache is persisted
    assert (tmp_path / NONCE_FILE).exists()
    rec2 = Recorder()
    make_dispatcher(tmp_path, key, rec2).handle(PREFIX + "rollback", payload)
    assert rec2.replies[0][1] is False and "replay" in str(rec2.replies[0][2])


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda p: p.update(pipeline="other"), "bad signature"),
    (lambda p: p.update(signature=base64.b64encode(b"x" * 64).decode()), "bad signature"),
    (lambda p: p.update(signature="%%%"), "bad signature"),
    (lambda p: p.update(key_id="0" * 16), "unknown key"),
    (lambda p: p.pop("nonce"), "unsigned"),
])
def test_tampered_signatures_are_refused(tmp_path: Path, key: Ed25519PrivateKey,
                                         mutate: Any, error: str) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec)
    payload = sign_command({"request_id": "r1", "pipeline": "cam", "ts": NOW}, key)
    mutate(payload)
    d.handle(PREFIX + "rollback", json.dumps(payload).encode())
    assert rec.replies[0][:2] == ("r1", False) and error in str(rec.replies[0][2])
    assert not rec.handled


def test_other_keys_skew_and_targets_are_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec)
    stranger = Ed25519PrivateKey.generate()
    d.handle(PREFIX + "restart", signed(stranger, request_id="a"))
    d.handle(PREFIX + "restart", json.dumps(sign_command(
        {"request_id": "b", "ts": NOW - 301}, key)).encode())
    d.handle(PREFIX + "restart", json.dumps(sign_command(
        {"request_id": "c", "ts": NOW + 400}, key)).encode())
    d.handle(PREFIX + "restart", signed(key, request_id="d", command="rollback"))
    d.handle(PREFIX + "restart", signed(key, request_id="e", device="other-device"))
    d.handle(PREFIX + "restart", signed(key, request_id="f", group="lobby"))  # not via group
    d.handle("edge-agent/group/lobby/cmd/restart", signed(key, request_id="g", group="lobby"))
    errors = {r[0]: (r[1], r[2]) for r in rec.replies}
    assert "unknown key" in str(errors["a"][1])
    assert "stale" in str(errors["b"][1]) and "stale" in str(errors["c"][1])
    assert all("wrong target" in str(errors[k][1]) for k in "def")
    assert errors["g"] == (True, None)
    assert [c.group for c in rec.handled] == ["lobby"]


def test_unsigned_commands_when_signatures_are_not_required(tmp_path: Path,
                                                            key: Ed25519PrivateKey) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec, require_signature=False)
    d.handle(PREFIX + "restart", b'{"request_id": "r1"}')
    assert rec.replies == [("r1", True, None)]


def test_model_update_needs_no_signature_and_replies_later(tmp_path: Path,
                                                           key: Ed25519PrivateKey) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec)
    msg = {"request_id": "u1", "pipeline": "cam", "manifest": {"name": "m", "version": 2}}
    d.handle(PREFIX + "model/update", json.dumps(msg).encode())
    assert rec.replies == []  # DEFERRED: the updater replies
    assert rec.handled[0].name == "model/update"


@pytest.mark.parametrize(("topic", "payload", "error"), [
    (PREFIX + "selfdestruct", b'{"request_id": "x"}', "unknown command"),
    (PREFIX + "restart", b"{not json", "malformed"),
    (PREFIX + "model/update", b'{"request_id": "x", "pipeline": "cam"}', "invalid"),
    (PREFIX + "model/update", b'{"request_id": "x", "pipeline": "CAM/#", "manifest": {}}',
     "invalid"),
    (PREFIX + "rollback", b'{"request_id": "x", "pipeline": "cam", "extra": 1}', "invalid"),
])
def test_malformed_commands_get_error_replies(tmp_path: Path, key: Ed25519PrivateKey,
                                              topic: str, payload: bytes, error: str) -> None:
    rec = Recorder()
    make_dispatcher(tmp_path, key, rec).handle(topic, payload)
    assert len(rec.replies) == 1
    request_id, ok, message = rec.replies[0]
    assert ok is False and error in str(message)
    assert request_id == ("x" if b'"x"' in payload else None)


def test_oversized_and_own_replies(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec, max_payload_bytes=100)
    d.on_message(PREFIX + "restart", b'{"request_id": "r"}' + b" " * 200)
    d.on_message(PREFIX + "reply", b'{"request_id": "r", "ok": true}')  # ours: ignored
    assert rec.replies == [(None, False, "oversized: payload of 219 bytes is over the limit "
                                         "of 100 for this command")]


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(
    st.text(max_size=6), scalars, max_size=3)
well_formed = st.fixed_dictionaries(
    {"request_id": st.text(min_size=1, max_size=40)},
    optional={"pipeline": st.text(max_size=12), "manifest": json_values, "ts": json_values,
              "nonce": st.text(max_size=20), "key_id": st.text(max_size=20),
              "signature": st.text(max_size=20), "url": json_values, "data": json_values})
commands = st.sampled_from(["model/update", "rollback", "config", "restart", "reply",
                            "unknown", "model", "model/update/x"])
payloads = st.one_of(
    well_formed.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(name=commands, group=st.booleans(), payload=payloads)
def test_fuzzed_commands_never_raise_and_every_request_gets_a_reply(
        tmp_path_factory: pytest.TempPathFactory, name: str, group: bool, payload: bytes) -> None:
    tmp = tmp_path_factory.getbasetemp() / "fuzz"
    tmp.mkdir(exist_ok=True)
    rec = Recorder()
    key = _FUZZ_KEY
    d = _FUZZ.get("d")
    if d is None:
        d = _FUZZ["d"] = make_dispatcher(tmp, key, rec)
    d.reply = rec.reply
    topic = ("edge-agent/group/lobby/cmd/" if group else PREFIX) + name
    d.on_message(topic, payload)  # intake: the paho thread's part
    d.process_pending()  # the worker's part, synchronously
    if name == "reply" and not group:
        assert rec.replies == []
        return
    try:
        obj = json.loads(payload)
    except ValueError:
        obj = None
    request_id = obj.get("request_id") if isinstance(obj, dict) else None
    if isinstance(request_id, str) and 0 < len(request_id) <= 128 and name != "model/update":
        # an id with a control character (a newline would forge log lines) is not echoed
        echoed = request_id if request_id.isprintable() else None
        assert [r[0] for r in rec.replies] == [echoed]
    assert all(isinstance(r[1], bool) for r in rec.replies)


_FUZZ_KEY = Ed25519PrivateKey.generate()
_FUZZ: dict[str, CommandDispatcher] = {}


def test_dispatcher_worker_thread_replies(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    rec = Recorder()
    d = make_dispatcher(tmp_path, key, rec)
    d.start()
    try:
        for i in range(20):
            d.on_message(PREFIX + "restart", signed(key, request_id=f"r{i}"))
    finally:
        d.stop(5)
    assert sorted(r[0] for r in rec.replies if r[0]) == sorted(f"r{i}" for i in range(20))
    assert sum(1 for r in rec.replies if r[1]) + d.counters.busy == 20


def test_commands_signed_by_the_operator_cli_verify(tmp_path: Path) -> None:
    from edge_agent import signing
    signing.generate_key_pair(tmp_path / "keys")
    key = signing.load_private_key(tmp_path / "keys" / "signing.key")
    rec = Recorder()
    cfg = make_config(state_dir=str(tmp_path), updates={
        "public_keys": [str(tmp_path / "keys" / "signing.pub")]})
    d = CommandDispatcher(cfg, {"rollback": rec.handler}, rec.reply)
    payload = signing.sign_command({"request_id": "op-1", "pipeline": "cam",
                                    "command": "rollback", "device": "test-device"}, key)
    d.handle(PREFIX + "rollback", json.dumps(payload).encode())
    assert rec.replies == [("op-1", True, None)]
