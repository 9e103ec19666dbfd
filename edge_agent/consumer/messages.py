"""Typed, read-only views of what a device publishes: results, events and status.

These are light views over the JSON payloads of the contract: the topic patterns and schema ids
come from :mod:`edge_agent.contract.messages` (the device's own declaration of each kind);
the fields a consumer needs are typed attributes, everything else stays in ``raw``. (The
contract's classes themselves are the *outgoing* messages, which only the device's privacy
policy may build; a consumer gets these read-only views instead.) They parse
leniently (an unknown extra field is kept, not refused) and strictly where identity is at stake
(``id``, ``seq``, ``device``, ``pipeline`` must be present and well-typed), because dedupe and
gap detection depend on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal

from edge_agent.contract.messages import SPECS, MessageSpec

Kind = Literal["results", "events"]


class MessageFormatError(ValueError):
    """A payload that is not a message of the contract; the text says what is wrong."""


def parse_ts(ts: str) -> float:
    """An ISO 8601 UTC timestamp (``...Z``) as seconds since the epoch.

    Raises:
        MessageFormatError: not a timestamp.
    """
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        raise MessageFormatError(f"ts {ts!r} is not an ISO 8601 time") from None


@dataclass(frozen=True, slots=True)
class Topic:
    """Where a message was published: ``P/D/<kind>/<pipeline>`` or ``P/D/status``."""

    prefix: str
    device: str
    kind: str  # results, events, status, inventory
    pipeline: str | None = None


def parse_topic(topic: str, prefix: str) -> Topic | None:
    """The parts of a device topic under ``prefix``, or None for any other topic."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head):].split("/")
    if len(parts) == 3 and parts[1] in ("results", "events"):
        return Topic(prefix, parts[0], parts[1], parts[2])
    if len(parts) == 2 and parts[1] in ("status", "inventory"):
        return Topic(prefix, parts[0], parts[1])
    return None


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection of a result; ``box`` is normalised ``(x0, y0, x1, y1)`` or None."""

    label: str
    class_id: int
    score: float | None = None
    box: tuple[float, float, float, float] | None = None
    track_id: int | None = None
    zones: tuple[str, ...] = ()


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise MessageFormatError(f"{where}: {key} must be a non-empty string")
    return v


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise MessageFormatError(f"{where}: {key} must be an integer")
    return v


def _detection(d: Any) -> Detection:
    if not isinstance(d, dict):
        raise MessageFormatError("detections: each must be an object")
    box = d.get("box")
    return Detection(
        label=str(d.get("label", "")), class_id=int(d.get("class_id", -1)),
        score=float(d["score"]) if isinstance(d.get("score"), int | float) else None,
        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3]))
        if isinstance(box, list) and len(box) == 4 else None,
        track_id=d.get("track_id") if isinstance(d.get("track_id"), int) else None,
        zones=tuple(str(z) for z in d.get("zones") or ()))


@dataclass(frozen=True, slots=True)
class Message:
    """What results and events share: identity, order and origin.

    Attributes:
        id: the message id (the same in every copy; deduplicate on it).
        seq: position in its topic's sequence (gap-free per topic, across restarts).
        device: the device id.
        pipeline: the pipeline name.
        boot_id: the producing agent process (None from agents older than boot_id).
        ts: capture time, ISO 8601 UTC.
        time: ``ts`` as seconds since the epoch.
        replayed: the agent re-sent it after a reconnect or restart (may be a duplicate).
        raw: the whole decoded payload.
    """

    id: str
    seq: int
    device: str
    pipeline: str
    boot_id: str | None
    ts: str
    time: float
    replayed: bool
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind: ClassVar[Kind] = "results"


@dataclass(frozen=True, slots=True)
class Result(Message):
    """A result (``P/D/results/<pipeline>``): what one frame's model output became."""

    detections: tuple[Detection, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    model: str = ""
    model_version: int = 0
    inference_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Event(Message):
    """An event (``P/D/events/<pipeline>``): ``enter``, ``leave``, zone and camera events, and
    ``target_changed`` (``target_from`` -> ``target_to``, with its ``reason``)."""

    event: str = ""
    label: str | None = None
    track_id: int | None = None
    dwell_s: float | None = None
    zone: str | None = None
    target_from: str | None = None
    target_to: str | None = None
    reason: str | None = None
    kind: ClassVar[Kind] = "events"


@dataclass(frozen=True, slots=True)
class Status:
    """The retained ``P/D/status``: online/offline, boot and the device's groups."""

    device: str
    state: str
    boot_id: str | None
    ts: str | None
    groups: tuple[str, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)


def _decode(payload: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageFormatError(f"{where}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MessageFormatError(f"{where}: not a JSON object")
    return obj


def _check_schema(d: dict[str, Any], spec: MessageSpec, where: str) -> None:
    """A ``schema`` field, when present, must be the contract's (another major version is
    another format)."""
    schema = d.get("schema")
    if schema is not None and schema != spec.schema_id:
        raise MessageFormatError(f"{where}: schema {schema!r} is not {spec.schema_id!r} "
                                 "(is this edge-agent too old for the device?)")


def _common(d: dict[str, Any], where: str) -> dict[str, Any]:
    ts = _str(d, "ts", where)
    boot = d.get("boot_id")
    return {"id": _str(d, "id", where), "seq": _int(d, "seq", where),
            "device": _str(d, "device", where), "pipeline": _str(d, "pipeline", where),
            "boot_id": boot if isinstance(boot, str) and boot else None,
            "ts": ts, "time": parse_ts(ts), "replayed": d.get("replayed") is True, "raw": d}


def parse_result(payload: bytes, where: str = "result") -> Result:
    """Decode a result payload.

    Raises:
        MessageFormatError: not JSON, or ``id``/``seq``/``device``/``pipeline``/``ts`` missing.
    """
    d = _decode(payload, where)
    _check_schema(d, SPECS["result"], where)
    dets = d.get("detections") or []
    if not isinstance(dets, list):
        raise MessageFormatError(f"{where}: detections must be a list")
    counts = d.get("counts") or {}
    model: dict[str, Any] = d["model"] if isinstance(d.get("model"), dict) else {}
    return Result(**_common(d, where), detections=tuple(_detection(x) for x in dets),
                  counts={str(k): int(v) for k, v in counts.items()
                          if isinstance(v, int | float)} if isinstance(counts, dict) else {},
                  model=str(model.get("name", "")), model_version=int(model.get("version", 0)),
                  inference_ms=float(d.get("inference_ms") or 0.0))


def parse_event(payload: bytes, where: str = "event") -> Event:
    """Decode an event payload.

    Raises:
        MessageFormatError: not JSON, or an identity field or ``event`` missing.
    """
    d = _decode(payload, where)
    _check_schema(d, SPECS["event"], where)
    dwell = d.get("dwell_s")
    track = d.get("track_id")
    return Event(**_common(d, where), event=_str(d, "event", where),
                 label=d.get("label") if isinstance(d.get("label"), str) else None,
                 track_id=track if isinstance(track, int) and not isinstance(track, bool)
                 else None,
                 dwell_s=float(dwell) if isinstance(dwell, int | float) else None,
                 zone=d.get("zone") if isinstance(d.get("zone"), str) else None,
                 target_from=d.get("from") if isinstance(d.get("from"), str) else None,
                 target_to=d.get("to") if isinstance(d.get("to"), str) else None,
                 reason=d.get("reason") if isinstance(d.get("reason"), str) else None)


def parse_status(payload: bytes, device: str, kind: str = "status") -> Status | None:
    """Decode a status (or, with ``kind="inventory"``, an inventory) payload; None for an
    empty one (a cleared retain).

    Raises:
        MessageFormatError: not a JSON object.
    """
    if not payload:
        return None
    d = _decode(payload, f"{device}/{kind}")
    if kind == "status":
        _check_schema(d, SPECS["status"], f"{device}/status")
    groups = d.get("groups") or []
    boot = d.get("boot_id")
    return Status(device=str(d.get("device") or device), state=str(d.get("state", "")),
                  boot_id=boot if isinstance(boot, str) and boot else None,
                  ts=d.get("ts") if isinstance(d.get("ts"), str) else None,
                  groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
                  raw=d)
