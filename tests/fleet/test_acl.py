"""The fleet ACL (deploy/mosquitto/edge-agent.acl plus deploy/fleet-add-device.sh) enforced
by a real mosquitto: a device cannot publish under another device's prefix, cannot read
another device's (or another group's) commands, and cannot publish commands; what it may do
still works (each check has its positive control on the same broker)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Mosquitto, mosquitto_binary
from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]


class Client:
    """A paho client with a user name and password that records what it receives."""

    def __init__(self, broker: Mosquitto, user: str, password: str, subs: list[str]) -> None:
        self.got: list[str] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connected_rc: object = None
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.time_ns()}",
                             protocol=paho.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.on_message = lambda c, u, m: self._add(m.topic)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.subs = subs

        def on_connect(c: paho.Client, u: object, f: object, rc: object, p: object) -> None:
            self.connected_rc = rc
            if subs:
                c.subscribe([(s, 1) for s in subs])
            else:
                self.subscribed.set()

        self.c.on_connect = on_connect
        self.c.connect(broker.host, broker.port, 30)
        self.c.loop_start()
        assert self.subscribed.wait(10), f"{user}: not connected/subscribed ({self.connected_rc})"

    def _add(self, topic: str) -> None:
        with self.lock:
            self.got.append(topic)

    def pub(self, topic: str) -> None:
        self.c.publish(topic, b'{"x":1}', qos=1).wait_for_publish(5)

    def topics(self) -> list[str]:
        with self.lock:
            return list(self.got)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _add(tmp: Path, device: str, *groups: str) -> str:
    args = [str(REPO / "deploy" / "fleet-add-device.sh"), device, "--passwd",
            str(tmp / "passwd"), "--acl", str(tmp / "acl"), "--password-out",
            str(tmp / f"{device}.pw")]
    for g in groups:
        args += ["--group", g]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return (tmp / f"{device}.pw").read_text().strip()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, str]]]:
    if mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None:
        if IN_CI:
            pytest.fail("mosquitto (with mosquitto_passwd) is not installed")
        pytest.skip("mosquitto is not installed")
    shutil.copy(REPO / "deploy" / "mosquitto" / "edge-agent.acl", tmp_path / "acl")
    pw = {"cam-a": _add(tmp_path, "cam-a", "lobby"), "cam-b": _add(tmp_path, "cam-b", "yard")}
    for user in ("operator", "collector"):
        pw[user] = user + "-secret"
        subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwd"), user, pw[user]],
                       check=True, capture_output=True)
    b = Mosquitto(tmp_path / "broker", extra_config=(
        f"allow_anonymous false\npassword_file {tmp_path}/passwd\nacl_file {tmp_path}/acl\n"))
    b.start()
    try:
        yield b, pw
    finally:
        b.stop()


def test_the_script_refuses_bad_and_duplicate_devices(tmp_path: Path) -> None:
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    shutil.copy(REPO / "deploy" / "mosquitto" / "edge-agent.acl", tmp_path / "acl")
    _add(tmp_path, "cam-a", "lobby")
    script = str(REPO / "deploy" / "fleet-add-device.sh")
    for args, why in ((["cam-a"], "already"), (["Cam/A"], "expected"),
                      (["operator"], "operator"), (["cam-c", "--group", "a/b"], "expected")):
        done = subprocess.run([script, *args, "--passwd", str(tmp_path / "passwd"), "--acl",
                               str(tmp_path / "acl")], capture_output=True, text=True)
        assert done.returncode != 0 and why in done.stderr, (args, done.stderr)


def test_a_device_stays_inside_its_own_prefix(acl_broker: tuple[Mosquitto, dict[str, str]]
                                             ) -> None:
    broker, pw = acl_broker
    op = Client(broker, "operator", pw["operator"], ["edge-agent/#"])
    a = Client(broker, "cam-a", pw["cam-a"],
               ["edge-agent/cam-a/cmd/#", "edge-agent/cam-b/cmd/#",
                "edge-agent/group/lobby/cmd/#", "edge-agent/group/yard/cmd/#"])
    b = Client(broker, "cam-b", pw["cam-b"], ["edge-agent/cam-b/cmd/#"])
    try:
        # allowed: own prefix
        a.pub("edge-agent/cam-a/results/door")
        a.pub("edge-agent/cam-a/cmd/reply")
        # refused: another device's prefix, and any command
        a.pub("edge-agent/cam-b/results/door")
        a.pub("edge-agent/cam-b/status")
        a.pub("edge-agent/cam-a/cmd/model/update")
        a.pub("edge-agent/cam-b/cmd/rollback")
        a.pub("edge-agent/group/lobby/cmd/restart")
        # operator commands: to cam-a, to cam-b, to each group
        for t in ("edge-agent/cam-a/cmd/model/update", "edge-agent/cam-b/cmd/model/update",
                  "edge-agent/group/lobby/cmd/model/update",
                  "edge-agent/group/yard/cmd/model/update"):
            op.pub(t)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
                len(a.topics()) < 2 or len(b.topics()) < 1
                or "edge-agent/cam-a/cmd/reply" not in op.topics()):
            time.sleep(0.1)
        time.sleep(1.0)  # anything refused would have arrived by now
        seen_op, seen_a, seen_b = op.topics(), a.topics(), b.topics()
    finally:
        for c in (op, a, b):
            c.stop()
    # positive controls
    assert "edge-agent/cam-a/results/door" in seen_op
    assert "edge-agent/cam-a/cmd/reply" in seen_op
    # its own commands and its group's, once each (its own publish of a command was refused),
    # never cam-b's nor the yard group's; its own reply arrives as it subscribes cmd/#
    assert sorted(seen_a) == ["edge-agent/cam-a/cmd/model/update",
                              "edge-agent/cam-a/cmd/reply",
                              "edge-agent/group/lobby/cmd/model/update"], seen_a
    assert seen_b == ["edge-agent/cam-b/cmd/model/update"], seen_b
    # a device cannot publish under another device's prefix, nor commands
    assert "edge-agent/cam-b/results/door" not in seen_op
    assert "edge-agent/cam-b/status" not in seen_op
    assert "edge-agent/cam-b/cmd/rollback" not in seen_op
    assert "edge-agent/group/lobby/cmd/restart" not in seen_op
    assert seen_op.count("edge-agent/cam-a/cmd/model/update") == 1  # the operator's only
