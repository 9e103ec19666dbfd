"""Commands through a real broker: junk at the command topics never stops publishing, and
every request whose request_id can be read gets exactly one reply on P/D/cmd/reply."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.mqtt.client import MqttTransport
from edge_agent.mqtt.commands import Command, CommandDispatcher, sign_command
from tests.broker import Mosquitto
from tests.mqtt.conftest import Subscriber, agent_config, result_renderer, wait_until
from tests.mqtt.test_commands import write_pub


def _junk(rng: random.Random, i: int) -> tuple[str, bytes, str | None]:
    """A command name, a payload and the request_id a reply must carry (None: unreadable)."""
    name = rng.choice(["model/update", "rollback", "config", "restart", "nope", "model/x"])
    kind = rng.randrange(5)
    rid = f"req-{i}"
    if kind == 0:
        return name, bytes(rng.randrange(256) for _ in range(rng.randrange(64))), None
    if kind == 1:
        return name, json.dumps([rid, i]).encode(), None
    body: dict[str, Any] = {"request_id": rid}
    for key in rng.sample(["pipeline", "manifest", "ts", "nonce", "key_id", "signature", "x"],
                          rng.randrange(4)):
        body[key] = rng.choice([None, 1, "cam", "", {"a": 1}, [1], 1e308, "Ω" * 5])
    if kind == 2:
        return name, json.dumps(body).encode()[:-1], None  # truncated
    return name, json.dumps(body).encode(), rid


def test_fuzzed_commands_over_mqtt(broker: Mosquitto, tmp_path: Path,
                                   subscriber_factory: Any) -> None:
    key = Ed25519PrivateKey.generate()
    pub = write_pub(key, tmp_path / "signing.pub")
    cfg = agent_config(broker, tmp_path, groups=["lobby"])
    cfg = cfg.model_copy(update={"commands": cfg.commands.model_copy(
        update={"public_keys": (pub,)})})
    replies: Subscriber = subscriber_factory(broker, "edge-agent/test-device/cmd/reply",
                                             client_id="reply-watcher")
    results: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#",
                                             client_id="result-watcher")
    transport = MqttTransport(cfg, tmp_path)
    handled: list[Command] = []

    def reply(request_id: str | None, ok: bool, error: str | None) -> None:
        body = {"request_id": request_id, "ok": ok, **({"error": error} if error else {})}
        transport.publish(transport.topics.cmd_reply(), json.dumps(body).encode(), qos=1,
                          retain=False)

    dispatcher = CommandDispatcher(
        cfg, {"restart": handled.append, "rollback": handled.append,
              "model/update": handled.append, "config": handled.append},
        reply, queue_size=2000)
    dispatcher.attach(transport)
    ready = threading.Event()
    transport.on_connected(ready.set)
    transport.start()
    stop = threading.Event()
    render = result_renderer("cam", transport.boot_id)

    def produce() -> None:
        while not stop.is_set():
            transport.publish_durable("cam", transport.topics.results("cam"), render)
            stop.wait(0.02)

    producer = threading.Thread(target=produce, name="test-producer")
    try:
        assert ready.wait(10)
        op = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fuzzer")
        op.connect(broker.host, broker.port)
        op.loop_start()
        rng = random.Random(4)
        expected: list[str] = []
        producer.start()
        for i in range(1000):
            name, payload, rid = _junk(rng, i)
            group = rng.random() < 0.2
            topic = (transport.topics.group_cmd("lobby", name) if group
                     else transport.topics.cmd(name))
            op.publish(topic, payload, qos=1)
            if rid is not None:
                expected.append(rid)
        good = sign_command({"request_id": "signed-1", "pipeline": "cam"}, key)
        info = op.publish(transport.topics.cmd("rollback"), json.dumps(good).encode(), qos=1)
        info.wait_for_publish(5)
        expected.append("signed-1")
        op.disconnect()
        op.loop_stop()
        got = lambda: [p["request_id"] for p in replies.payloads()]  # noqa: E731
        assert wait_until(lambda: set(expected) <= set(got()), 30)
        seen_before = transport.stats()["acked"]
        assert wait_until(lambda: transport.stats()["acked"] > seen_before + 5)
    finally:
        stop.set()
        if producer.is_alive():
            producer.join()
        dispatcher.stop(5)
        transport.stop(5)
    ids = got()
    assert sorted(r for r in ids if r is not None) == sorted(expected)  # exactly one each
    assert [c.request_id for c in handled if c.name == "rollback"][-1:] == ["signed-1"]
    assert len(results.payloads()) > 10  # results kept flowing
