"""The single egress point: every byte that goes to the broker passes through EgressGuard.

The agent gives the transport to the guard and the guard (never the transport) to
pipelines, the updater and the command handler, so nothing else can reach
``transport.publish`` (``tests/contract/test_boundaries.py`` checks the source for it). The
guard accepts only the contract's message classes (:mod:`edge_agent.contract.messages`),
exactly those classes, issued by its own seal (see :mod:`edge_agent.privacy.seal`). For each it
takes topic, retention, durability, QoS, size limit and schema from the class's
:class:`~edge_agent.contract.messages.MessageSpec`, serialises compact UTF-8 JSON, validates it
against the kind's published JSON Schema, enforces the size limit, publishes (durable kinds
through the outbox), and writes an audit line. Anything else is refused, counted by kind and
reason, and logged without its content.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edge_agent.contract.messages import (
    MESSAGE_TYPES,
    SPECS,
    DiscoveryMessage,
    MessageSpec,
    OutgoingMessage,
    SnapshotMessage,
)
from edge_agent.errors import PublishError
from edge_agent.privacy.audit import AuditLog
from edge_agent.privacy.schemas import validate
from edge_agent.privacy.seal import Seal, thaw

logger = logging.getLogger(__name__)

DEFAULT_LIMITS: dict[str, int] = {
    **{kind: spec.limit for kind, spec in SPECS.items()},
    **{f"{kind}_meta": spec.meta_limit for kind, spec in SPECS.items() if spec.meta_limit},
}
"""Largest payload in bytes per kind, from the contract (``snapshot_meta``: its JSON)."""

_ACCEPTED = frozenset(MESSAGE_TYPES.values())
_SEGMENT = re.compile(r"^[a-z0-9_-]{1,64}$")
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


class Transport(Protocol):
    """What the guard needs of :class:`edge_agent.mqtt.client.MqttTransport`."""

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None: ...

    def publish_durable(self, pipeline: str, topic: str,
                        render: Callable[[int, str], bytes]) -> int: ...

    def set_will(self, topic: str, payload: bytes) -> None: ...


class Refused(Exception):
    """Internal: why a message is refused (a reason word, never content)."""


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# made once: json.dumps with any option builds a new encoder per call; encode() keeps no state


def dumps(payload: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused."""
    return _ENCODER.encode(payload).encode("utf-8")


_HEAD_KEYS = frozenset({"schema", "id", "seq", "boot_id"})
"""Keys a durable message's head (added by the guard) puts before the policy's fields."""


def _spliced(head: Mapping[str, Any], tail: bytes) -> bytes:
    """``dumps({**head, **rest})`` from ``tail = dumps(rest)`` (no key of ``rest`` in head)."""
    start = dumps(head)
    return start if tail == b"{}" else start[:-1] + b"," + tail[1:]


class EgressGuard:
    """The one object allowed to publish; see the module docstring."""

    def __init__(self, transport: Transport, topic_prefix: str, device_id: str,
                 audit: AuditLog | None, seal: Seal, limits: Mapping[str, int] | None = None,
                 *, qos: int = 1, discovery_prefix: str = "homeassistant") -> None:
        """Guard ``transport``.

        Args:
            transport: the MQTT transport (publish, publish_durable, set_will).
            topic_prefix: ``mqtt.topic_prefix``.
            device_id: the device id (second topic level).
            audit: the audit log, or None to keep none.
            seal: the agent's seal; only messages it issued are published.
            limits: per-kind byte limits overriding :data:`DEFAULT_LIMITS`.
            qos: MQTT QoS for non-durable messages (``mqtt.qos``).
            discovery_prefix: Home Assistant discovery topics must start with it.
        """
        self._transport = transport
        self.base = f"{topic_prefix.rstrip('/')}/{device_id}"
        self.audit = audit
        self._seal = seal
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.qos = qos
        self.discovery_prefix = discovery_prefix.rstrip("/") + "/"
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._reasons: dict[str, int] = {}
        self._per_pipeline: dict[str, dict[str, int]] = {}
        self._last_result: dict[str, tuple[int, int]] = {}  # pipeline -> (frame index, seq)
        self._topics: dict[tuple[str, str | None], str] = {}  # (kind, pipeline) -> topic
        self._queue_failing: set[str] = set()  # topics whose last durable queueing failed

    # ------------------------------------------------------------------ counters

    def counters(self) -> dict[str, dict[str, int]]:
        """Published/refused counts and bytes per kind, and refusal reasons (flat dicts)."""
        with self._lock:
            return {"published": dict(self._published), "bytes": dict(self._bytes),
                    "refused": dict(self._refused), "refused_reasons": dict(self._reasons)}

    def pipeline_counters(self, pipeline: str) -> dict[str, int]:
        """``published`` and ``refused`` messages of one pipeline."""
        with self._lock:
            return dict(self._per_pipeline.get(pipeline, {"published": 0, "refused": 0}))

    def _bump_pipeline(self, pipeline: str | None, key: str) -> None:
        if pipeline is not None and _SEGMENT.match(pipeline):
            d = self._per_pipeline.setdefault(pipeline, {"published": 0, "refused": 0})
            d[key] += 1

    def _refuse(self, kind: str, reason: str, pipeline: str | None = None,
                size: int = 0) -> bool:
        with self._lock:
            n = self._refused[kind] = self._refused.get(kind, 0) + 1
            self._reasons[reason] = self._reasons.get(reason, 0) + 1
            self._bump_pipeline(pipeline, "refused")
        if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two
            logger.warning("egress refused a %s message (%s); %d refused so far",
                           kind, reason, n)
        if self.audit is not None:
            self.audit.record(topic="", kind=kind, size=size, pipeline=pipeline,
                              outcome="refused", reason=reason)
        return False

    def _published_ok(self, kind: str, topic: str, size: int, pipeline: str | None) -> None:
        with self._lock:
            self._published[kind] = self._published.get(kind, 0) + 1
            self._bytes[kind] = self._bytes.get(kind, 0) + size
            self._bump_pipeline(pipeline, "published")
        if self.audit is not None:
            self.audit.record(topic=topic, kind=kind, size=size, pipeline=pipeline)

    # ------------------------------------------------------------------ topics

    def topic(self, msg: OutgoingMessage) -> str:
        """The topic ``msg`` goes to (raises :class:`Refused` for a bad pipeline or topic)."""
        spec = msg.SPEC
        if isinstance(msg, DiscoveryMessage):
            t = msg.topic
            if (not isinstance(t, str) or not t.startswith(self.discovery_prefix)
                    or any(c in t for c in "#+\0") or len(t) > 256):
                raise Refused("bad_topic")
            return t
        p = msg.pipeline
        key = (spec.kind, p)
        topic = self._topics.get(key)  # hot path: one lookup per message after the first
        if topic is not None:
            return topic
        if spec.per_pipeline and (not isinstance(p, str) or not _SEGMENT.match(p)):
            raise Refused("bad_pipeline")
        topic = spec.topic_for(self.base, p)
        if len(self._topics) < 4096:  # valid names only, bounded: pipelines x kinds in practice
            self._topics[key] = topic
        return topic

    # ------------------------------------------------------------------ sending

    def _check(self, msg: object) -> MessageSpec | None:
        """The spec of an acceptable message; None after counting a refusal.

        Exactly the contract's classes pass (a subclass or a look-alike with the same fields
        is refused as ``not_a_message``), carrying the guard's seal, issued by it.
        """
        if type(msg) not in _ACCEPTED or not isinstance(msg, OutgoingMessage):
            name = "dict" if isinstance(msg, Mapping) else type(msg).__name__
            self._refuse("invalid", f"not_a_message:{name}"[:64])
            return None
        spec, pipeline = msg.SPEC, msg.pipeline
        kind = spec.kind
        if msg.seal is None:
            self._refuse(kind, "unsealed", pipeline)
            return None
        if msg.seal is not self._seal:
            self._refuse(kind, "foreign_seal", pipeline)
            return None
        if not self._seal.redeem(msg):
            self._refuse(kind, "not_issued", pipeline)
            return None
        return spec

    def _body(self, kind: str, payload: Any, limit_key: str | None = None) -> bytes:
        """Serialise, bound and validate ``payload`` (raises :class:`Refused`)."""
        try:
            body = dumps(payload)
        except (TypeError, ValueError):
            raise Refused("not_serialisable") from None
        if len(body) > self.limits[limit_key or kind]:
            raise Refused("too_large")
        self._validate(kind, payload)
        return body

    @staticmethod
    def _validate(kind: str, payload: Any) -> None:
        """Validate the object that was just serialised, without parsing the bytes back.

        Equivalent to validating ``json.loads(body)``: ``dumps`` succeeded, so the payload
        holds only str keys, dicts, lists (the seal's frozen forms are dict and list
        subclasses, thawed copies plain ones), str, int, float (finite), bool and None, each of
        which parses back to an equal value of the same JSON type. The validator only reads.
        """
        try:
            validate(kind, payload)
        except PublishError as exc:
            logger.debug("%s", exc)
            raise Refused("schema") from None

    def send(self, msg: OutgoingMessage) -> bool:
        """Publish ``msg``; False when refused (counted, logged without content) or failed."""
        spec = self._check(msg)
        if spec is None:
            return False
        kind, pipeline = spec.kind, msg.pipeline
        try:
            topic = self.topic(msg)
            if spec.durable:
                return self._send_durable(msg, kind, topic)
            if isinstance(msg, SnapshotMessage):
                return self._send_snapshot(msg, topic)
            if isinstance(msg, DiscoveryMessage) and not msg.payload:
                body = b""  # removal of a retained discovery config
            else:
                body = self._body(kind, thaw(msg.payload))
        except Refused as why:
            return self._refuse(kind, str(why), pipeline)
        return self._publish(spec, kind, topic, body, pipeline)

    def _publish(self, spec: MessageSpec, kind: str, topic: str, body: bytes,
                 pipeline: str | None) -> bool:
        qos = self.qos if spec.qos is None else spec.qos
        try:
            self._transport.publish(topic, body, qos=qos, retain=spec.retained)
        except (PublishError, OSError) as exc:
            logger.warning("publishing a %s message to %s failed: %s", kind, topic, exc)
            return self._refuse(kind, "publish_failed", pipeline, len(body))
        self._published_ok(kind, topic, len(body), pipeline)
        return True

    def _send_durable(self, msg: OutgoingMessage, kind: str, topic: str) -> bool:
        base = msg.payload  # frozen: dicts and lists only, read here and never changed
        pipeline = str(msg.pipeline)
        rest = {k: v for k, v in base.items() if k != "schema"}
        boot_id = getattr(self._transport, "boot_id", None)
        boot_id = boot_id if isinstance(boot_id, str) and 0 < len(boot_id) <= 64 else None
        # The body after the head is serialised once; render() only splices the head in front.
        # That gives the bytes dumps({**head, **rest}) would, unless rest repeats a head key.
        splice = not (rest.keys() & _HEAD_KEYS)
        try:
            tail = dumps(rest) if splice else b""
        except (TypeError, ValueError):
            raise Refused("not_serialisable") from None
        # check before the outbox is touched: a placeholder seq/id of maximal length
        placeholder = {"schema": base.get("schema"), "id": "x" * 36, "seq": 2**53, **rest}
        if splice:
            if len(_spliced({"schema": base.get("schema"), "id": "x" * 36, "seq": 2**53},
                            tail)) > self.limits[kind]:
                raise Refused("too_large")
            self._validate(kind, placeholder)
        else:
            self._body(kind, placeholder)
        sizes: list[int] = []

        def render(seq: int, msg_id: str) -> bytes:
            if (not isinstance(seq, int) or seq < 0 or not isinstance(msg_id, str)
                    or not 0 < len(msg_id) <= 64):
                raise PublishError("outbox handed a bad seq or id to render")
            head: dict[str, Any] = {"schema": base.get("schema"), "id": msg_id, "seq": seq}
            if boot_id:
                head["boot_id"] = boot_id  # a subscriber tells a restart from a loss by it
            body = _spliced(head, tail) if splice else dumps({**head, **rest})
            if len(body) > self.limits[kind]:
                raise PublishError(f"{kind} payload over its size limit after seq/id")
            sizes.append(len(body))
            return body

        try:
            seq = self._transport.publish_durable(pipeline, topic, render)
        except (PublishError, OSError) as exc:
            with self._lock:  # once per run of failures per topic: a full disk fails them all
                first = topic not in self._queue_failing
                self._queue_failing.add(topic)
            if first:
                logger.warning("queueing a %s message for %s failed: %s (logged once until it "
                               "works again; counted as publish_failed)", kind, topic, exc)
            return self._refuse(kind, "publish_failed", pipeline)
        if self._queue_failing:
            with self._lock:
                recovered = topic in self._queue_failing
                self._queue_failing.discard(topic)
            if recovered:
                logger.warning("queueing messages for %s works again", topic)
        if kind == "result":
            frame = base.get("frame") or {}
            with self._lock:
                self._last_result[pipeline] = (int(frame.get("index", -1)), int(seq))
        self._published_ok(kind, topic, sizes[-1] if sizes else 0, pipeline)
        return True

    def _send_snapshot(self, msg: SnapshotMessage, topic: str) -> bool:
        data, pipeline = msg.data, str(msg.pipeline)
        if not isinstance(data, bytes) or not (data.startswith(_JPEG_SOI)
                                               and data.endswith(_JPEG_EOI)):
            raise Refused("not_jpeg")
        if len(data) > self.limits["snapshot"]:
            raise Refused("too_large")
        meta = thaw(msg.payload)
        with self._lock:
            index, seq = self._last_result.get(pipeline, (-1, -1))
        frame = meta.get("frame") or {}
        meta["result_seq"] = seq if seq >= 0 and frame.get("index") == index else None
        body = self._body("snapshot", meta, "snapshot_meta")
        if not self._publish(msg.SPEC, "snapshot", topic, data, pipeline):
            return False
        return self._publish(msg.SPEC, "snapshot_meta", f"{topic}/meta", body, pipeline)

    def set_will(self, msg: OutgoingMessage) -> bool:
        """Register the offline ``status`` message as the MQTT last will."""
        spec = self._check(msg)
        if spec is None:
            return False
        kind, pipeline = spec.kind, msg.pipeline
        if kind != "status" or msg.payload.get("state") != "offline":
            return self._refuse(kind, "not_an_offline_status", pipeline)
        try:
            topic = self.topic(msg)
            body = self._body(kind, thaw(msg.payload))
        except Refused as why:
            return self._refuse(kind, str(why), pipeline)
        self._transport.set_will(topic, body)
        return True
