"""Shared test fakes (add to this file; do not overwrite others' fakes)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Published:
    """One message a fake transport was asked to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    durable: bool = False
    seq: int | None = None
    id: str | None = None


@dataclass
class RecordingTransport:
    """A transport (the MqttTransport surface the egress guard uses) that records publishes.

    ``publish_durable`` allocates a gap-free seq per pipeline and a uuid hex id like the
    outbox, and calls ``render(seq, id)`` exactly once; if render raises, no seq is used.
    """

    messages: list[Published] = field(default_factory=list)
    will: tuple[str, bytes] | None = None
    fail: bool = False  # publish raises PublishError
    boot_id: str = "test-boot"
    _seqs: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        if self.fail:
            from edge_agent.errors import PublishError

            raise PublishError("fake transport set to fail")
        assert isinstance(payload, bytes)
        with self._lock:
            self.messages.append(Published(topic, payload, qos, retain))

    def publish_durable(self, pipeline: str, topic: str,
                        render: Callable[[int, str], bytes]) -> int:
        if self.fail:
            from edge_agent.errors import PublishError

            raise PublishError("fake transport set to fail")
        with self._lock:
            seq = self._seqs.get(pipeline, 0) + 1
            msg_id = uuid.uuid4().hex
            payload = render(seq, msg_id)
            assert isinstance(payload, bytes)
            self._seqs[pipeline] = seq
            self.messages.append(Published(topic, payload, 1, False, True, seq, msg_id))
            return seq

    def set_will(self, topic: str, payload: bytes) -> None:
        self.will = (topic, payload)

    def topics(self) -> list[str]:
        with self._lock:
            return [m.topic for m in self.messages]

    def on(self, topic: str) -> list[Published]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]
