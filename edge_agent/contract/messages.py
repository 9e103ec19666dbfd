"""Every message kind that leaves the device, declared once.

Each kind is one frozen class below. Its :class:`MessageSpec` says where the message goes
(topic pattern), whether it is retained, whether it goes through the durable outbox, its QoS,
its size limit, its schema id and the JSON Schema file its payload must validate against.
The egress guard (:mod:`edge_agent.privacy.egress`) reads all of this from the spec and
nothing else; ``docs/schemas`` is generated from it (:mod:`edge_agent.contract.schemagen`).

Adding a message kind is: one spec, one class, one payload model in
:mod:`edge_agent.contract.payloads` (its schema file is generated from it), one factory in the
privacy package, one golden case in ``tests/contract``.

Only :mod:`edge_agent.privacy` may construct these (through its :class:`~edge_agent.privacy.
seal.Seal`); a static test (``tests/contract/test_boundaries.py``) fails when any other
module does, and the guard refuses at run time anything that is not exactly one of these
classes issued by its own seal.

Topic patterns (``{base}`` = ``P/D``, ``{pipeline}`` a ``[a-z0-9_-]{1,64}`` name)::

    result       {base}/results/{pipeline}        durable (the outbox allocates seq and id)
    event        {base}/events/{pipeline}         durable
    status       {base}/status                    retained (offline: the last will)
    model_state  {base}/model/{pipeline}/state    retained
    stats        {base}/stats
    snapshot     {base}/snapshots/{pipeline}      the JPEG; its metadata on .../meta
    cmd_reply    {base}/cmd/reply
    discovery    {topic}                          retained; under the discovery prefix
    inventory    {base}/inventory                 retained; what the device is and runs
    shadow       {base}/model/{pipeline}/shadow   retained; a shadow candidate's agreement
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

KiB = 1024

MessageKind = Literal[
    "result", "event", "status", "model_state", "stats", "snapshot", "cmd_reply", "discovery",
    "inventory", "shadow",
]


@dataclass(frozen=True, slots=True)
class MessageSpec:
    """What the contract says about one message kind.

    Attributes:
        kind: the kind's name (counters, audit lines, refusal logs).
        topic: the topic pattern: ``{base}`` is ``topic_prefix/device_id``, ``{pipeline}``
            the pipeline name; ``{topic}`` means the message carries its full topic
            (discovery, checked against the discovery prefix).
        retained: published with the MQTT retain flag.
        durable: stored in the outbox (at-least-once, ``seq`` and ``id`` added) before sending.
        qos: the MQTT QoS; None means the configured ``mqtt.qos`` (durable kinds: the
            outbox's QoS 1).
        limit: largest payload in bytes (snapshots: the JPEG; see ``meta_limit``).
        schema_id: the ``schema`` field the payload carries, None when the payload belongs
            to someone else (Home Assistant's discovery configs).
        schema_file: the JSON Schema the payload validates against (``edge_agent/schemas``).
        meta_limit: for a kind with binary data, the limit of its JSON metadata message.
    """

    kind: MessageKind
    topic: str
    retained: bool
    durable: bool
    qos: Literal[0, 1, 2] | None
    limit: int
    schema_id: str | None
    schema_file: str
    meta_limit: int | None = None

    @property
    def per_pipeline(self) -> bool:
        """Whether the topic names a pipeline (the message must carry a valid one)."""
        return "{pipeline}" in self.topic

    def topic_for(self, base: str, pipeline: str | None) -> str:
        """The topic of a message on device ``base`` (``P/D``); patterns only, no checks."""
        return self.topic.format(base=base, pipeline=pipeline)


@dataclass(frozen=True)
class OutgoingMessage:
    """A message that the privacy policy made and the egress guard may publish.

    Not slotted, so the seal can remember issued messages weakly (no cap on messages made
    and not yet sent). Never construct one directly: see the module docstring.

    Attributes:
        pipeline: the pipeline it belongs to, or None for device-wide messages.
        payload: the JSON body (frozen by the seal); for snapshots the metadata.
        seal: the policy's seal; the guard refuses anything else.
    """

    SPEC: ClassVar[MessageSpec]
    pipeline: str | None
    payload: Mapping[str, Any]
    seal: object = None

    @property
    def kind(self) -> MessageKind:
        """The message kind (from the class's spec)."""
        return self.SPEC.kind

    @property
    def retain(self) -> bool:
        """Published retained (from the class's spec)."""
        return self.SPEC.retained


@dataclass(frozen=True)
class ResultMessage(OutgoingMessage):
    """One frame's result after the privacy policy."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "result", "{base}/results/{pipeline}", retained=False, durable=True, qos=None,
        limit=256 * KiB, schema_id="edge-agent/result@1", schema_file="result.json")


@dataclass(frozen=True)
class EventMessage(OutgoingMessage):
    """A tracked object entered or left the scene."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "event", "{base}/events/{pipeline}", retained=False, durable=True, qos=None,
        limit=8 * KiB, schema_id="edge-agent/event@1", schema_file="event.json")


@dataclass(frozen=True)
class StatusMessage(OutgoingMessage):
    """The device's retained online/offline status (offline is the last will)."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "status", "{base}/status", retained=True, durable=False, qos=None,
        limit=64 * KiB, schema_id="edge-agent/status@1", schema_file="status.json")


@dataclass(frozen=True)
class ModelStateMessage(OutgoingMessage):
    """The retained state of a pipeline's model (downloading ... active, rolled back)."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "model_state", "{base}/model/{pipeline}/state", retained=True, durable=False, qos=None,
        limit=8 * KiB, schema_id="edge-agent/model-state@1", schema_file="model_state.json")


@dataclass(frozen=True)
class StatsMessage(OutgoingMessage):
    """Periodic counters of the device and its pipelines."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "stats", "{base}/stats", retained=False, durable=False, qos=None,
        limit=128 * KiB, schema_id="edge-agent/stats@1", schema_file="stats.json")


@dataclass(frozen=True)
class SnapshotMessage(OutgoingMessage):
    """A redacted JPEG (``data``) and its metadata (``payload``, sent on ``.../meta``)."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "snapshot", "{base}/snapshots/{pipeline}", retained=False, durable=False, qos=None,
        limit=4096 * KiB, schema_id="edge-agent/snapshot-meta@1",
        schema_file="snapshot_meta.json", meta_limit=4 * KiB)
    data: bytes = b""


@dataclass(frozen=True)
class CmdReplyMessage(OutgoingMessage):
    """The answer to one command."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "cmd_reply", "{base}/cmd/reply", retained=False, durable=False, qos=None,
        limit=8 * KiB, schema_id="edge-agent/cmd-reply@1", schema_file="cmd_reply.json")


@dataclass(frozen=True)
class DiscoveryMessage(OutgoingMessage):
    """A retained Home Assistant discovery config on its own ``topic`` (empty: removal)."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "discovery", "{topic}", retained=True, durable=False, qos=None,
        limit=16 * KiB, schema_id=None, schema_file="discovery.json")
    topic: str = ""


@dataclass(frozen=True)
class InventoryMessage(OutgoingMessage):
    """The device's retained inventory: agent and runtime versions, board, pipelines with
    their models and model states, fleet groups and trusted key ids (re-sent on change)."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "inventory", "{base}/inventory", retained=True, durable=False, qos=1,
        limit=32 * KiB, schema_id="edge-agent/inventory@1", schema_file="inventory.json")


@dataclass(frozen=True)
class ShadowMessage(OutgoingMessage):
    """The retained agreement figures of a pipeline's shadow candidate against its active
    model (aggregates only: no frame, no box of an individual frame)."""

    SPEC: ClassVar[MessageSpec] = MessageSpec(
        "shadow", "{base}/model/{pipeline}/shadow", retained=True, durable=False, qos=1,
        limit=16 * KiB, schema_id="edge-agent/shadow@1", schema_file="shadow.json")


MESSAGE_TYPES: dict[MessageKind, type[OutgoingMessage]] = {
    cls.SPEC.kind: cls for cls in (
        ResultMessage, EventMessage, StatusMessage, ModelStateMessage, StatsMessage,
        SnapshotMessage, CmdReplyMessage, DiscoveryMessage, InventoryMessage,
        ShadowMessage)
}
"""Kind -> its class: the only classes the egress guard accepts."""

SPECS: dict[MessageKind, MessageSpec] = {k: cls.SPEC for k, cls in MESSAGE_TYPES.items()}
"""Kind -> its spec."""

SCHEMA_IDS: dict[str, str] = {k: s.schema_id for k, s in SPECS.items() if s.schema_id}
"""Kind -> the ``schema`` field its payload carries."""
