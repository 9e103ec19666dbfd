"""A subscriber for delivery tests: a persistent MQTT session that records every copy it gets.

Unlike :class:`tests.e2e.agentproc.Inbox` it keeps, per message, the MQTT DUP flag (a broker
redelivery, which the agent cannot mark ``replayed``), the retain flag and the arrival time
(wall clock, for latency against the result's ``ts``; monotonic, for rates), and it
reconnects within half a second so a broker restart does not leave it waiting behind paho's
default backoff.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


@dataclass(slots=True)
class Copy:
    """One received copy of a message."""

    topic: str
    payload: bytes
    retain: bool
    dup: bool
    wall: float  # time.time() at arrival
    mono: float  # time.monotonic() at arrival
    _decoded: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def json(self) -> dict[str, Any]:
        """The payload decoded as JSON (once; do not modify the result)."""
        if self._decoded is None:
            self._decoded = json.loads(self.payload)
        return self._decoded


class Recorder:
    """A paho client (MQTT 3.1.1, QoS 1 subscriptions) that records what arrives.

    Args:
        host: broker host.
        port: broker port.
        topics: topic filters to subscribe to (QoS 1) after every connect.
        client_id: a fixed id; with ``clean=False`` the broker keeps the session (and queues
            QoS 1 messages) while this client or the broker is away.
        clean: start a clean session.
        tls: optional ``(ca_certs, certfile, keyfile)``.
    """

    def __init__(self, host: str, port: int, topics: Sequence[str], *, client_id: str = "",
                 clean: bool = True,
                 tls: tuple[str, str | None, str | None] | None = None) -> None:
        self.copies: list[Copy] = []
        self.connects = 0
        self._topics = list(topics)
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   clean_session=clean if client_id else True,
                                   protocol=MQTTProtocolVersion.MQTTv311)
        self._client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        if tls is not None:
            ca, cert, key = tls
            self._client.tls_set(ca_certs=ca, certfile=cert, keyfile=key,
                                 cert_reqs=ssl.CERT_REQUIRED)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    # ------------------------------------------------------------------ paho callbacks

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        if reason.is_failure:
            return
        with self._cond:
            self.connects += 1
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        copy = Copy(msg.topic, bytes(msg.payload), bool(msg.retain), bool(msg.dup),
                    time.time(), time.monotonic())
        with self._cond:
            self.copies.append(copy)
            self._cond.notify_all()

    # ------------------------------------------------------------------ control

    def start(self, timeout: float = 10.0) -> Recorder:
        """Connect, start the network thread and wait for the first SUBACK."""
        self._client.connect_async(self._host, self._port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"recorder could not subscribe at {self._host}:{self._port}")
        return self

    def close(self) -> None:
        """Disconnect (the persistent session stays on the broker) and join the thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                wait: bool = True) -> paho.MQTTMessageInfo:
        """Publish one message; with ``wait`` until the broker acknowledged it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(timeout=10)
            assert info.is_published(), f"publish to {topic} not acknowledged"
        return info

    # ------------------------------------------------------------------ what arrived

    def mark(self) -> int:
        """A position in :attr:`copies`; pass it as ``since`` to look only at later ones."""
        with self._cond:
            return len(self.copies)

    def select(self, suffix: str = "", since: int = 0) -> list[Copy]:
        """Copies on topics ending with ``suffix`` (from position ``since``)."""
        with self._cond:
            return [c for c in self.copies[since:] if c.topic.endswith(suffix)]

    def json(self, suffix: str, since: int = 0) -> list[dict[str, Any]]:
        """Non-empty payloads on topics ending with ``suffix``, decoded."""
        return [c.json() for c in self.select(suffix, since) if c.payload]

    def wait_for(self, pred: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``pred()`` holds, checked every 20 ms at most (not on every arrival: a
        predicate that looks at every copy would slow the subscriber down during a burst)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if pred():
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            time.sleep(0.02)


def parse_ts(ts: str) -> float:
    """A result's ``ts`` (ISO 8601 UTC, ``Z`` suffix) as seconds since the epoch."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]
