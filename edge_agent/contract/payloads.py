"""The payload of every message kind, field by field: the one place a field is written.

Each kind's payload is a :class:`~typing.TypedDict`; ``edge_agent/schemas/<kind>.json`` is
generated from it (:func:`documents`, run by :mod:`edge_agent.contract.schemagen`; a test
fails when a file is stale), and the builders in :mod:`edge_agent.privacy` annotate the dicts
they make with it, so mypy checks each key and value type against the same declaration.
Lengths, patterns and ranges are :class:`~edge_agent.contract.typed_schema.J` metadata.
Cross-field rules that a type cannot say (which event carries which fields) are the
``allOf`` of the kind's :class:`Payload` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from typing_extensions import NotRequired, TypedDict

from edge_agent.contract.messages import SCHEMA_IDS, SPECS, MessageKind
from edge_agent.contract.typed_schema import J, JsonSchema, document, schema_of

# ------------------------------------------------------------------ shared field types
Name = Annotated[str, J(pattern="^[a-z0-9_-]+$", maxLength=64)]
"""A pipeline, zone or group name."""
Device = Annotated[str, J(pattern="^[a-z0-9_-]+$", maxLength=128)]
Timestamp = Annotated[str, J(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", maxLength=24)]
"""UTC, milliseconds: ``2026-09-21T08:53:20.123Z``."""
Sha256 = Annotated[str, J(pattern="^[0-9a-f]{64}$|^$")]
Count = Annotated[int, J(minimum=0)]
Unit = Annotated[float, J(minimum=0, maximum=1)]
MessageId = Annotated[str, J(minLength=1, maxLength=64)]
BootId = Annotated[str, J(minLength=1, maxLength=64, description=(
    "changes at every start of the agent: a seq that restarts with a new boot_id is a "
    "restart, not a loss"))]
Replayed = Annotated[bool, J(description=(
    "set by the outbox on a message re-sent after a reconnect or restart (it may be a "
    "duplicate)"))]
SchemaId = str
"""The ``schema`` field: its value is the kind's ``MessageSpec.schema_id`` (written there only;
:func:`documents` makes it the field's ``const``)."""
Box = Annotated[list[Unit], J(minItems=4, maxItems=4)]
"""Normalised xyxy (see :mod:`edge_agent.types`)."""

Scalar = Annotated[str | float | int | bool | None, J(maxLength=1024)]
Flat = Annotated[dict[str, Scalar], J(maxProperties=64, propertyNames={"maxLength": 64})]
"""A flat dict of scalars (runtime, outbox, mqtt figures)."""
ScalarOrFlat = Annotated[object, J(anyOf=[schema_of(Scalar), schema_of(Flat)])]
LabelCounts = Annotated[dict[str, Count], J(maxProperties=1000,
                                            propertyNames={"maxLength": 128})]


class ModelRefPayload(TypedDict):
    """A model: name, version and SHA-256 of its file."""

    name: Annotated[str, J(maxLength=256)]
    version: Count
    sha256: Sha256


class FramePayload(TypedDict):
    """The frame a result or snapshot is about."""

    index: Count
    width: Count
    height: Count


# ------------------------------------------------------------------ result
class DetectionPayload(TypedDict):
    """One detected object."""

    label: Annotated[str, J(maxLength=128)]
    class_id: int
    score: NotRequired[Unit]
    box: NotRequired[Box]
    keypoints: NotRequired[Annotated[list[Annotated[list[float], J(minItems=2, maxItems=2)]],
                                     J(maxItems=64)]]
    track_id: NotRequired[Count]
    attributes: NotRequired[Annotated[dict[str, Annotated[str, J(maxLength=256)]],
                                      J(maxProperties=16, propertyNames={"maxLength": 64})]]
    zones: NotRequired[Annotated[list[Name], J(
        maxItems=64, description="the configured zones the object is in (pipelines with zones)")]]


class ClassPayload(TypedDict):
    """One class of a classifier's top-k."""

    label: Annotated[str, J(maxLength=128)]
    class_id: int
    score: NotRequired[Unit]


class ResultPayload(TypedDict):
    """``edge-agent/result@1``."""

    schema: SchemaId
    id: MessageId
    seq: Count
    boot_id: NotRequired[BootId]
    device: Device
    pipeline: Name
    ts: Timestamp
    model: ModelRefPayload
    frame: FramePayload
    inference_ms: Annotated[float, J(minimum=0)]
    detections: NotRequired[Annotated[list[DetectionPayload], J(maxItems=1000)]]
    counts: LabelCounts
    zones: NotRequired[Annotated[dict[str, LabelCounts], J(
        maxProperties=64, description=(
            "pipelines with zones: per zone, the count per label of the objects in it "
            "(every zone present, empty when none)"),
        propertyNames={"pattern": "^[a-z0-9_-]+$", "maxLength": 64})]]
    classes: NotRequired[Annotated[list[ClassPayload], J(maxItems=1000)]]
    values: NotRequired[Annotated[list[float], J(maxItems=1000)]]
    aggregate: NotRequired[Literal["counts"]]
    replayed: NotRequired[Replayed]


# ------------------------------------------------------------------ event
EventName = Literal["enter", "leave", "zone_enter", "zone_leave", "loitering",
                    "camera_blocked", "camera_moved", "camera_defocused", "camera_dark",
                    "camera_frozen", "camera_ok", "source_down", "source_up", "target_changed"]
TRACK_EVENTS = ("enter", "leave", "zone_enter", "zone_leave", "loitering")


class CameraFigures(TypedDict, total=False):
    """Camera-health figures about the whole picture."""

    brightness: float
    contrast: float
    sharpness: float
    similarity: float


EventPayload = TypedDict("EventPayload", {  # functional form: "from" is a Python keyword
    "schema": SchemaId,
    "id": MessageId,
    "seq": Count,
    "boot_id": NotRequired[BootId],
    "device": Device,
    "pipeline": Name,
    "ts": Timestamp,
    "event": EventName,
    "zone": NotRequired[Annotated[Name, J(description="zone_enter, zone_leave, loitering: "
                                                      "the zone's name")]],
    "track_id": NotRequired[Count],
    "label": NotRequired[Annotated[str, J(maxLength=128)]],
    "class_id": NotRequired[int],
    "dwell_s": NotRequired[Annotated[float, J(minimum=0)]],
    "box": NotRequired[Box],
    "replayed": NotRequired[Replayed],
    "camera": NotRequired[Annotated[CameraFigures, J(
        description="camera-health events: the check's figures about the whole picture")]],
    "from": NotRequired[Annotated[str | None, J(
        maxLength=64, description="target_changed: the target that served before (null: none)")]],
    "to": NotRequired[Annotated[str, J(maxLength=64,
                                       description="target_changed: the target serving now")]],
    "reason": NotRequired[Annotated[str, J(maxLength=256, description="target_changed: why")]],
})
"""``edge-agent/event@1``."""


def _only_with(when: JsonSchema, fields: list[str], forbidden: list[str]) -> JsonSchema:
    """``fields`` required when ``when`` holds, and none of ``forbidden`` otherwise."""
    return {"if": {"properties": {"event": when}}, "then": {"required": fields},
            "else": {"not": {"anyOf": [{"required": [f]} for f in forbidden]}}}


# ------------------------------------------------------------------ status, stats
StatusState = Literal["online", "offline"]


class StatusPipeline(TypedDict):
    """A pipeline in the status: name, state, and further scalars or flat dicts."""

    name: Name
    state: NotRequired[Annotated[str, J(maxLength=64)]]


class StatusPayload(TypedDict):
    """``edge-agent/status@1``."""

    schema: SchemaId
    device: Device
    state: StatusState
    ts: Timestamp
    agent_version: Annotated[str, J(maxLength=64)]
    started_at: NotRequired[Timestamp | None]
    boot_id: NotRequired[Annotated[str | None, J(maxLength=64)]]
    pipelines: NotRequired[Annotated[list[Annotated[StatusPipeline, J(
        maxProperties=64, additionalProperties=schema_of(ScalarOrFlat))]], J(maxItems=64)]]
    runtime: NotRequired[Flat]
    outbox: NotRequired[Flat]
    mqtt: NotRequired[Flat]


class StatsPayload(TypedDict):
    """``edge-agent/stats@1``."""

    schema: SchemaId
    device: Device
    ts: Timestamp
    uptime_s: NotRequired[Annotated[float, J(minimum=0)]]
    cpu_temp_c: NotRequired[float | None]
    pipelines: Annotated[dict[str, Annotated[dict[str, ScalarOrFlat], J(
        maxProperties=64, propertyNames={"maxLength": 64})]], J(
        maxProperties=64, propertyNames={"pattern": "^[a-z0-9_-]+$"})]
    outbox: NotRequired[Flat]
    mqtt: NotRequired[Flat]
    egress: NotRequired[Annotated[dict[str, Flat], J(maxProperties=16)]]


# ------------------------------------------------------------------ model state, reply
ModelStateName = Literal["downloading", "verifying", "validating", "active", "rejected",
                         "rolled_back"]


class ModelStatePayload(TypedDict):
    """``edge-agent/model-state@1``."""

    schema: SchemaId
    device: Device
    pipeline: Name
    ts: Timestamp
    state: ModelStateName
    name: Annotated[str, J(maxLength=256)]
    version: Count
    sha256: Sha256
    reason: Annotated[str | None, J(maxLength=1024)]
    active: ModelRefPayload | None
    previous: ModelRefPayload | None
    progress: NotRequired[Unit | None]


class CmdReplyPayload(TypedDict):
    """``edge-agent/cmd-reply@1``."""

    schema: SchemaId
    device: Device
    ts: Timestamp
    request_id: Annotated[str, J(minLength=1, maxLength=128)]
    ok: bool
    error: NotRequired[Annotated[str | None, J(maxLength=2048)]]


# ------------------------------------------------------------------ snapshot metadata
class SnapshotMetaPayload(TypedDict):
    """``edge-agent/snapshot-meta@1``."""

    schema: SchemaId
    device: Device
    pipeline: Name
    ts: Timestamp
    frame: FramePayload
    result_seq: NotRequired[Count | None]
    size: Annotated[int, J(minimum=1)]
    sha256: Sha256
    faces_redacted: Annotated[Count | None, J(description=(
        "faces redacted in this image; null when face redaction is off (face_redaction: "
        "off), 0 when it is on and none were found"))]
    redact_mode: NotRequired[Literal["blur", "fill"]]
    masks: Count
    width: Annotated[int, J(minimum=1)]
    height: Annotated[int, J(minimum=1)]
    face_redaction: NotRequired[Annotated[Literal["on", "off"], J(description=(
        "whether faces were redacted (off only with privacy.allow_unredacted_images in the "
        "device's own config)"))]]


# ------------------------------------------------------------------ discovery
_Short = Annotated[str | list[object], J(maxLength=256)]


class DiscoveryPayload(TypedDict, total=False):
    """A Home Assistant discovery config: open (Home Assistant's keys), bounded."""

    device: Annotated[dict[str, Annotated[object, J(anyOf=[
        schema_of(Scalar),
        schema_of(Annotated[list[_Short], J(maxItems=8)])])]], J(maxProperties=16)]


_DISCOVERY_VALUE = schema_of(Annotated[object, J(anyOf=[
    schema_of(Scalar), schema_of(Flat),
    schema_of(Annotated[list[ScalarOrFlat], J(maxItems=16)])])])


# ------------------------------------------------------------------ inventory
Text = Annotated[str | None, J(maxLength=256)]


class InventoryRuntime(TypedDict):
    """The inference runtime."""

    backend: Annotated[str | None, J(maxLength=64)]
    version: Annotated[str | None, J(maxLength=64)]
    python: NotRequired[Annotated[str | None, J(maxLength=32)]]


class InventoryBoard(TypedDict):
    """The board (None where unknown)."""

    model: Text
    soc: Text
    machine: NotRequired[Annotated[str | None, J(maxLength=32)]]
    cpus: NotRequired[Count | None]
    memory_mb: Count | None
    cpu_temp_c: float | None


class InventoryModelState(TypedDict):
    """The updater's last state of a pipeline's model."""

    state: Annotated[str, J(maxLength=32)]
    name: NotRequired[Text]
    version: NotRequired[Count | None]
    reason: NotRequired[Annotated[str | None, J(maxLength=1024)]]


class InventoryPipeline(TypedDict):
    """A pipeline in the inventory."""

    name: Name
    state: NotRequired[Annotated[str | None, J(maxLength=32)]]
    model: ModelRefPayload | None
    model_state: InventoryModelState | None
    delegate: NotRequired[Annotated[str | None, J(maxLength=128)]]
    target: NotRequired[Annotated[str | None, J(maxLength=64)]]
    targets: NotRequired[Annotated[list[Annotated[str, J(maxLength=64)]], J(maxItems=16)]]


class InventoryPayload(TypedDict):
    """``edge-agent/inventory@1``."""

    schema: SchemaId
    device: Device
    ts: Timestamp
    agent_version: Annotated[str, J(maxLength=64)]
    boot_id: NotRequired[Annotated[str | None, J(maxLength=64)]]
    runtime: InventoryRuntime
    board: InventoryBoard
    pipelines: Annotated[list[InventoryPipeline], J(maxItems=64)]
    groups: Annotated[list[Name], J(maxItems=64)]
    trusted_keys: Annotated[list[Annotated[str, J(pattern="^[0-9a-f]{1,64}$")]],
                            J(maxItems=64)]


# ------------------------------------------------------------------ shadow
ShadowState = Literal["shadowing", "promoted", "rejected", "stopped"]
Number = float | None
Share = Annotated[float | None, J(minimum=0, maximum=1)]
NCount = Annotated[int | None, J(minimum=0)]


class ShadowGate(TypedDict):
    """The manifest's shadow gate."""

    frames: NCount
    min_recall: Share
    min_precision: Share
    max_latency_ratio: Number


class Percentiles(TypedDict):
    """Latency percentiles in ms."""

    p50: Number
    p95: Number


class ShadowLatency(TypedDict):
    """Latency of both models."""

    active: Percentiles
    candidate: Percentiles


class ShadowSampling(TypedDict):
    """How frames were sampled for the candidate."""

    every: NCount
    offered: NCount
    sampled: NCount
    dropped: NCount
    skipped_busy: NCount
    when_idle: bool


class LabelAgreement(TypedDict):
    """Agreement on one label."""

    precision: Share
    recall: Share
    active: NCount
    candidate: NCount


class DetectionAgreement(TypedDict):
    """Detector agreement."""

    iou: Number
    precision: Share
    recall: Share
    mean_iou: Share
    active_count: NCount
    candidate_count: NCount
    mean_count_diff: Number
    mean_abs_count_diff: Number
    labels: Annotated[dict[str, LabelAgreement], J(maxProperties=100,
                                                   propertyNames={"maxLength": 64})]


class ClassificationAgreement(TypedDict):
    """Classifier agreement."""

    frames: NCount
    top1: Share
    top5: Share


class ValuesAgreement(TypedDict):
    """Agreement of raw values."""

    frames: NCount
    mean_abs_diff: Number
    max_abs_diff: Number


class ShadowFigures(TypedDict):
    """Aggregates only: numbers, and label names as the only text."""

    frames: NCount
    failures: NCount
    non_finite: NCount
    latency_ratio: Number
    latency_ms: ShadowLatency
    sampling: ShadowSampling
    detection: NotRequired[DetectionAgreement]
    classification: NotRequired[ClassificationAgreement]
    values: NotRequired[ValuesAgreement]


class ShadowPayload(TypedDict):
    """``edge-agent/shadow@1``."""

    schema: SchemaId
    device: Device
    pipeline: Name
    ts: Timestamp
    state: ShadowState
    candidate: ModelRefPayload | None
    active: ModelRefPayload | None
    gate: ShadowGate | None
    reason: Annotated[str | None, J(maxLength=1024)]
    figures: ShadowFigures


# ------------------------------------------------------------------ the documents
@dataclass(frozen=True)
class Payload:
    """One kind's payload model and what its schema file adds to it."""

    model: type
    title: str
    file_id: str
    extra: JsonSchema = field(default_factory=dict)


PAYLOADS: dict[MessageKind, Payload] = {
    "result": Payload(ResultPayload, "A result: what one frame's model output became after "
                      "the privacy policy", "result.json"),
    "event": Payload(EventPayload, "A tracked object entered or left the scene or a zone, or "
                     "loitered in a zone; or the camera's condition changed; or the execution "
                     "target changed", "event.json", {
                         "allOf": [
                             _only_with({"enum": list(TRACK_EVENTS)},
                                        ["track_id", "label", "class_id", "dwell_s"],
                                        ["track_id", "label", "class_id", "dwell_s", "box",
                                         "zone"]),
                             _only_with({"const": "target_changed"}, ["from", "to", "reason"],
                                        ["from", "to", "reason"])]}),
    "status": Payload(StatusPayload, "Device status (retained); offline is the MQTT last will",
                      "status.json"),
    "model_state": Payload(ModelStatePayload, "A pipeline's model state (retained)",
                           "model-state.json"),
    "stats": Payload(StatsPayload, "Periodic statistics (no content, only numbers)",
                     "stats.json"),
    "snapshot": Payload(SnapshotMetaPayload, "Metadata of a redacted JPEG snapshot (the JPEG "
                        "goes to snapshots/<pipeline>)", "snapshot-meta.json"),
    "cmd_reply": Payload(CmdReplyPayload, "The reply to a command", "cmd-reply.json"),
    "discovery": Payload(DiscoveryPayload, "A Home Assistant MQTT discovery config (retained; "
                         "an empty payload removes it)", "discovery.json", {
                             "maxProperties": 64, "propertyNames": {"maxLength": 64},
                             "additionalProperties": _DISCOVERY_VALUE}),
    "inventory": Payload(InventoryPayload, "A device's inventory (retained, re-sent on change)",
                         "inventory.json"),
    "shadow": Payload(ShadowPayload, "A pipeline's shadow candidate: agreement with the "
                      "active model (retained; aggregates only)", "shadow.json"),
}
"""Kind -> its payload model (every kind of :data:`~edge_agent.contract.messages.SPECS`)."""


def documents() -> dict[str, JsonSchema]:
    """Schema file name (``edge_agent/schemas``) -> its JSON Schema, made from the models."""
    out: dict[str, JsonSchema] = {}
    for kind, payload in PAYLOADS.items():
        doc = document(payload.model, schema_id=payload.file_id, title=payload.title,
                       extra=payload.extra)
        schema_id = SCHEMA_IDS.get(kind)
        props = doc.get("properties")
        if schema_id is not None and isinstance(props, dict):
            props["schema"] = {"const": schema_id}
        out[SPECS[kind].schema_file] = doc
    return out
