"""The operator CLI: keygen/sign/verify round trip, and push/status/rollback against a device
made of the real MQTT transport, command dispatcher and updater on a real broker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import make_config
from edge_agent.contract.topics import Topics
from edge_agent.mqtt.client import MqttTransport
from edge_agent.mqtt.commands import DEFERRED, Command, CommandDispatcher
from edge_agent.signing import load_public_keys
from edge_agent.updater.store import ModelStore
from edge_agent.updater.updater import ModelUpdater, UpdateHooks
from tests.broker import Mosquitto
from tests.conftest import REPO, shared_model
from tests.updater.conftest import AgentDouble, real_validate


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", "model", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_keygen_sign_verify_round_trip(tmp_path: Path) -> None:
    model = shared_model("face_detection_full_range_sparse.tflite")  # default models
    labels = shared_model("face.txt")
    r = cli("keygen", "--out", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    assert "key_id" in r.stdout
    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 1
    out = tmp_path / "m.json"
    r = cli("sign", str(model), "--key", str(tmp_path / "k" / "signing.key"), "--name", "det",
            "--version", "4", "--labels", str(labels), "--url", "https://example.org/m.tflite",
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads(out.read_text())
    assert manifest["version"] == 4 and manifest["labels"] == labels.read_text()
    pub = str(tmp_path / "k" / "signing.pub")
    r = cli("verify", str(out), "--pub", pub, "--file", str(model))
    assert r.returncode == 0 and "signature OK" in r.stdout and "file OK" in r.stdout, r.stderr
    r = cli("verify", str(out), "--pub", pub, "--file", str(labels))
    assert r.returncode == 1 and "manifest says" in r.stderr
    cli("keygen", "--out", str(tmp_path / "other"))
    r = cli("verify", str(out), "--pub", str(tmp_path / "other" / "signing.pub"))
    assert r.returncode == 1 and "unknown key" in r.stderr
    out.write_text(out.read_text().replace('"version": 4', '"version": 5'))
    r = cli("verify", str(out), "--pub", pub)
    assert r.returncode == 1 and "bad signature" in r.stderr
    r = cli("sign", str(model), "--key", str(tmp_path / "k" / "signing.key"), "--name",
            "../x", "--version", "1", "--out", str(tmp_path / "n.json"))
    assert r.returncode == 1 and "invalid name" in r.stderr


@dataclass
class Device:
    topics: Topics
    agent: AgentDouble
    store: ModelStore
    keys_dir: Path


@pytest.fixture
def device(broker: Mosquitto, tmp_path: Path) -> Iterator[Device]:
    """What the agent wires for one pipeline, minus the pipeline itself."""
    keys_dir = tmp_path / "keys"
    assert cli("keygen", "--out", str(keys_dir)).returncode == 0
    pub = keys_dir / "signing.pub"
    config = make_config(device_id="dev1", state_dir=str(tmp_path / "state"),
                         mqtt={"host": broker.host, "port": broker.port, "groups": ["lobby"]},
                         updates={"public_keys": [str(pub)], "watch_seconds": 0,
                                  "watch_inferences": 0})
    topics = Topics(config.mqtt.topic_prefix, config.device_id)
    transport = MqttTransport(config, tmp_path / "state")
    store = ModelStore(tmp_path / "state" / "models" / "door")
    active = store.resolve_active(shared_model("face_detection_short_range.tflite"))
    agent = AgentDouble(("configured", 0, active.sha256), real_validate("anchors"))

    def publish_state(state: dict[str, Any]) -> None:
        agent.states.append(state)
        transport.publish(topics.model_state("door"), json.dumps(state).encode(), qos=1,
                          retain=True)

    def reply(rid: str | None, ok: bool, error: str | None) -> None:
        body = {"request_id": rid, "ok": ok, **({"error": error} if error else {})}
        transport.publish(topics.cmd_reply(), json.dumps(body).encode(), qos=1, retain=False)

    hooks = UpdateHooks(active=lambda: agent.active_model, validate=agent.validate,
                        swap=agent.hooks().swap, publish_state=publish_state,
                        reply=lambda r, ok, e: reply(r, ok, e))
    updater = ModelUpdater("door", config.updates, store,
                           load_public_keys(config.updates.public_keys), hooks)

    def on_update(cmd: Command) -> Any:
        updater.handle_update(cmd.payload)
        return DEFERRED

    def on_rollback(cmd: Command) -> Any:
        updater.rollback(cmd.request_id)
        return DEFERRED

    dispatcher = CommandDispatcher(config, {"model/update": on_update, "rollback": on_rollback},
                                   reply)
    for topic_filter in dispatcher.topic_filters():
        transport.subscribe(topic_filter, dispatcher.on_message)
    transport.start()
    dispatcher.start()
    updater.start(active)
    try:
        yield Device(topics, agent, store, keys_dir)
    finally:
        updater.stop()
        dispatcher.stop()
        transport.stop(timeout=2)


@pytest.mark.slow
def test_push_status_rollback(device: Device, broker: Mosquitto, tmp_path: Path) -> None:
    model = shared_model("face_detection_full_range_sparse.tflite")
    key = str(device.keys_dir / "signing.key")
    addr = f"{broker.host}:{broker.port}"
    m1 = tmp_path / "m1.json"
    assert cli("sign", str(model), "--key", key, "--name", "det", "--version", "1", "--url",
               model.resolve().as_uri(), "--out", str(m1)).returncode == 0
    r = cli("push", str(m1), "--pipeline", "door", "--device", "dev1", "--broker", addr,
            "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dev1: verifying" in r.stdout and "dev1: active det v1" in r.stdout
    assert device.agent.active_model[1] == 1

    r = cli("status", "--device", "dev1", "--broker", addr)
    assert r.returncode == 0 and "door: active" in r.stdout and "det v1" in r.stdout, r.stdout

    # an older version over the inline path ends rejected, exit 1
    m0 = tmp_path / "m0.json"
    other = shared_model("pose_detection.tflite")
    cli("sign", str(other), "--key", key, "--name", "cls", "--version", "1", "--out", str(m0))
    r = cli("push", str(m0), "--pipeline", "door", "--device", "dev1", "--broker", addr,
            "--file", str(other), "--timeout", "30")
    assert r.returncode == 1 and "rejected" in r.stdout and "not above" in r.stdout, r.stdout

    r = cli("rollback", "--device", "dev1", "--pipeline", "door", "--broker", addr, "--key",
            key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rolled_back" in r.stdout
    assert device.agent.active_model[1] == 0

    # the v1 manifest again after the rollback: a replay, under the anti-rollback floor
    r = cli("push", str(m1), "--pipeline", "door", "--device", "dev1", "--broker", addr,
            "--file", str(model), "--timeout", "30")
    assert r.returncode == 1 and "anti-rollback floor" in r.stdout, r.stdout
    assert device.agent.active_model[1] == 0

    # to a group, inline: waits the whole timeout, then sums up the devices that answered
    m2 = tmp_path / "m2.json"
    assert cli("sign", str(model), "--key", key, "--name", "det", "--version", "2",
               "--out", str(m2)).returncode == 0
    r = cli("push", str(m2), "--pipeline", "door", "--group", "lobby", "--broker", addr,
            "--file", str(model), "--timeout", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dev1: active det v2" in r.stdout and "dev1: done" in r.stdout
    assert device.agent.active_model[1] == 2


def test_model_commands_take_the_broker_option_family(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """DESIGN.md: every --broker command takes --tls-ca/--tls-cert/--tls-key/--username/
    --password-file; `model status` reads a retained state through a broker that requires a
    password, and is refused (exit 1, a one-line reason) with the wrong one."""
    import json as _json
    import shutil
    import subprocess

    import paho.mqtt.client as paho

    from edge_agent.cli import build_parser, main
    from tests.broker import Mosquitto
    from tests.conftest import missing

    args = build_parser().parse_args(
        ["model", "push", "m.json", "--pipeline", "p", "--device", "d", "--broker", "h",
         "--cafile", "ca.pem", "--cert", "c.pem", "--keyfile", "k.pem"])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == ("ca.pem", "c.pem", "k.pem")
    if shutil.which("mosquitto_passwd") is None:
        missing("mosquitto_passwd (Debian's mosquitto package)")
    passwd = tmp_path / "broker.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "ops", "s3cret"], check=True)
    with Mosquitto(tmp_path / "broker",
                   extra_config=f"allow_anonymous false\npassword_file {passwd}\n") as broker:
        model = {"name": "door-detector", "version": 3, "sha256": "ab" * 32}
        state = {"state": "active", **model, "reason": None, "active": model, "previous": None}
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        client.username_pw_set("ops", "s3cret")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.publish("edge-agent/dev1/model/door/state", _json.dumps(state), qos=1,
                       retain=True).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        good = tmp_path / "pw"
        good.write_text("s3cret\n")
        base = ["model", "status", "--device", "dev1", "--broker", f"127.0.0.1:{broker.port}",
                "--username", "ops", "--timeout", "5"]
        assert main([*base, "--password-file", str(good)]) == 0
        out = capsys.readouterr().out
        assert "door-detector" in out and "3" in out, out
        bad = tmp_path / "bad"
        bad.write_text("nope\n")
        assert main([*base, "--password-file", str(bad)]) == 1
        assert "cannot reach the broker" in capsys.readouterr().err
