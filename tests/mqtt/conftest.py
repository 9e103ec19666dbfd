"""Helpers for the MQTT tests: a recording paho subscriber and a transport config factory."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.config import AgentConfig, make_config
from tests.broker import Mosquitto


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def agent_config(broker: Mosquitto, state_dir: Path, **mqtt: Any) -> AgentConfig:
    """A real config pointing at ``broker``, with quick reconnects."""
    section: dict[str, Any] = {"host": broker.host, "port": broker.port, "reconnect_max_s": 1.0}
    section.update(mqtt)
    return make_config(state_dir=str(state_dir), mqtt=section)


class Subscriber:
    """A paho client with a persistent session that records every message it receives."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str = "test-subscriber",
                 **tls: Any) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        if tls:
            self.client.tls_set(**tls)
        self.topic = topic
        self.connected = threading.Event()
        self.subscriptions = 0  # SUBACKs received: one per (re)connect that subscribed
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        if not self.connected.wait(10):
            self.close()
            raise RuntimeError("test subscriber could not connect")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any) -> None:
        if not rc.is_failure:
            client.subscribe(self.topic, qos=1)
            self.connected.set()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any,
                      props: Any) -> None:
        with self._lock:
            self.subscriptions += 1

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.dup)))

    def payloads(self) -> list[dict[str, Any]]:
        """Every received payload parsed as JSON, in arrival order.

        A copy the broker redelivered to us (MQTT DUP flag: the broker-to-subscriber leg, which
        the agent cannot mark) gets ``"_mqtt_dup": True``.
        """
        with self._lock:
            return [{**json.loads(p), **({"_mqtt_dup": True} if dup else {})}
                    for _, p, dup in self.messages if p]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(*args: Any, **kwargs: Any) -> Subscriber:
        sub = Subscriber(*args, **kwargs)
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


def marked(payload: dict[str, Any]) -> bool:
    """Whether a received copy is flagged as a possible duplicate (by us or by the broker)."""
    return bool(payload.get("replayed") or payload.get("_mqtt_dup"))


def result_renderer(pipeline: str, boot_id: str) -> Callable[[int, str], bytes]:
    """A render callable that builds a small result payload."""

    def render(seq: int, msg_id: str) -> bytes:
        return json.dumps({"schema": "edge-agent/result@1", "id": msg_id, "seq": seq,
                           "pipeline": pipeline, "boot_id": boot_id}).encode()

    return render
