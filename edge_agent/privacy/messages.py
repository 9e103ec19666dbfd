"""Factories for every device-wide outgoing message (status, stats, model state, replies,
events, Home Assistant discovery). Each needs the agent's seal; the egress guard publishes
nothing else. Results and snapshots come from :class:`~edge_agent.privacy.policy.PrivacyPolicy`.

Values are coerced to plain JSON types (numpy scalars to numbers, paths to text, non-finite
floats to null); nesting deeper than the schemas allow is refused later by the guard.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any, cast

from edge_agent.contract.messages import SCHEMA_IDS, OutgoingMessage
from edge_agent.contract.payloads import (
    ClassificationAgreement,
    CmdReplyPayload,
    DetectionAgreement,
    InventoryPayload,
    InventoryPipeline,
    LabelAgreement,
    ModelRefPayload,
    ModelStateName,
    ModelStatePayload,
    Percentiles,
    ShadowFigures,
    ShadowGate,
    ShadowLatency,
    ShadowPayload,
    ShadowSampling,
    ShadowState,
    StatsPayload,
    StatusPayload,
    StatusState,
    ValuesAgreement,
)
from edge_agent.privacy.policy import PrivacyPolicy, iso_ts, model_dict
from edge_agent.privacy.seal import Seal
from edge_agent.types import ModelRef, TrackEvent

MODEL_STATES = ("downloading", "verifying", "validating", "active", "rejected", "rolled_back")


def plain(value: Any) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, int, float, bool, None)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        try:
            return plain(value.item())
        except (TypeError, ValueError):
            return str(value)
    return str(value)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: Any, limit: int) -> str:
    """Text that may come from a command (untrusted), as valid Unicode: a lone surrogate (JSON
    allows ``"\\ud800"``) cannot be encoded as UTF-8 and would make the guard refuse the
    whole message, so it becomes U+FFFD."""
    return _LONE_SURROGATE.sub("\ufffd", str(value)[:limit])


def _now(ts: float | None) -> str:
    return iso_ts(time.time() if ts is None else ts)


def status(seal: Seal, *, device: str, state: StatusState, agent_version: str,
           started_at: float | None, pipelines: Sequence[Mapping[str, Any]] = (),
           runtime: Mapping[str, Any] | None = None, boot_id: str | None = None,
           outbox: Mapping[str, Any] | None = None, mqtt: Mapping[str, Any] | None = None,
           ts: float | None = None) -> OutgoingMessage:
    """The retained ``P/D/status`` message (``state`` online, or offline for the last will).

    Args:
        seal: the agent's seal.
        device: the device id.
        state: ``online`` or ``offline``.
        agent_version: the package version.
        started_at: when the agent started (epoch seconds), or None.
        pipelines: one dict per pipeline: ``name`` (required), ``state`` and further scalar
            fields or flat dicts of scalars (e.g. ``model``: name/version/sha256).
        runtime: flat dict about the runtime (backend, version, delegate, threads).
        boot_id: the transport's boot id (a restart changes it).
        outbox: flat dict of outbox stats (depth, dropped).
        mqtt: flat dict of the broker connection (connected, reconnects, last_error,
            down_since).
        ts: the message time; default now.
    """
    payload: StatusPayload = {
        "schema": SCHEMA_IDS["status"], "device": device, "state": state, "ts": _now(ts),
        "agent_version": agent_version,
        "started_at": None if started_at is None else iso_ts(started_at),
        "boot_id": boot_id, "pipelines": [plain(p) for p in pipelines],
    }
    if runtime is not None:
        payload["runtime"] = plain(runtime)
    if outbox is not None:
        payload["outbox"] = plain(outbox)
    if mqtt is not None:
        payload["mqtt"] = plain(mqtt)
    return seal.issue("status", None, payload)


def stats(seal: Seal, *, device: str, pipelines: Mapping[str, Mapping[str, Any]],
          uptime_s: float | None = None, outbox: Mapping[str, Any] | None = None,
          mqtt: Mapping[str, Any] | None = None,
          egress: Mapping[str, Mapping[str, Any]] | None = None,
          cpu_temp_c: float | None = None, ts: float | None = None) -> OutgoingMessage:
    """The periodic ``P/D/stats`` message.

    Args:
        seal: the agent's seal.
        device: the device id.
        pipelines: pipeline name -> dict of scalars or flat dicts (fps, inference_ms_p50,
            inference_ms_p95, dropped_frames, ..., ``privacy``: the policy's counters).
        uptime_s: seconds since start.
        outbox: flat dict (depth, dropped, ...).
        mqtt: flat dict (connected, reconnects, ...).
        egress: :meth:`EgressGuard.counters` (flat dicts per counter group).
        cpu_temp_c: CPU temperature, if known.
        ts: the message time; default now.
    """
    payload: StatsPayload = {"schema": SCHEMA_IDS["stats"], "device": device, "ts": _now(ts),
                               "pipelines": plain(pipelines), "cpu_temp_c": plain(cpu_temp_c)}
    if uptime_s is not None:
        payload["uptime_s"] = round(max(0.0, float(uptime_s)), 3)
    if outbox is not None:
        payload["outbox"] = plain(outbox)
    if mqtt is not None:
        payload["mqtt"] = plain(mqtt)
    if egress is not None:
        payload["egress"] = plain(egress)
    return seal.issue("stats", None, payload)


def _ref(model: ModelRef | Mapping[str, Any] | None) -> ModelRefPayload | None:
    if model is None:
        return None
    if isinstance(model, ModelRef):
        return model_dict(model)
    return model_dict(ModelRef(str(model["name"]), int(model["version"]), str(model["sha256"])))


def model_state(seal: Seal, *, device: str, pipeline: str, state: ModelStateName, name: str,
                version: int, sha256: str, reason: str | None = None,
                active: ModelRef | Mapping[str, Any] | None = None,
                previous: ModelRef | Mapping[str, Any] | None = None,
                progress: float | None = None, ts: float | None = None) -> OutgoingMessage:
    """The retained ``P/D/model/<pipeline>/state`` message.

    ``name``/``version``/``sha256`` are the model the event is about; ``active`` names the
    model serving now; ``progress`` (0..1) is for downloads.
    """
    payload: ModelStatePayload = {
        "schema": SCHEMA_IDS["model_state"], "device": device, "pipeline": pipeline,
        "ts": _now(ts), "state": state, "name": str(name), "version": int(version),
        "sha256": str(sha256).lower(), "reason": None if reason is None else _text(reason, 1024),
        "active": _ref(active), "previous": _ref(previous),
    }
    if progress is not None:
        payload["progress"] = plain(min(1.0, max(0.0, float(progress))))
    return seal.issue("model_state", pipeline, payload)


def cmd_reply(seal: Seal, *, device: str, request_id: str, ok: bool, error: str | None = None,
              ts: float | None = None) -> OutgoingMessage:
    """The ``P/D/cmd/reply`` message answering one command."""
    payload: CmdReplyPayload = {"schema": SCHEMA_IDS["cmd_reply"], "device": device,
                               "ts": _now(ts), "request_id": _text(request_id, 128),
                               "ok": bool(ok)}
    if error is not None:
        payload["error"] = _text(error, 2048)
    return seal.issue("cmd_reply", None, payload)


def event(ev: TrackEvent, policy: PrivacyPolicy) -> OutgoingMessage | None:
    """The ``P/D/events/<pipeline>`` message for a tracker event, or None if the policy hides it."""
    return policy.event(ev)


def discovery(seal: Seal, topic: str, config: Mapping[str, Any] | None) -> OutgoingMessage:
    """A retained Home Assistant discovery config on ``topic`` (full topic, e.g.
    ``homeassistant/sensor/<device>_<pipeline>_person/config``).

    An empty or None ``config`` removes the entity (an empty retained payload).
    """
    return seal.issue("discovery", None, plain(config or {}), topic=topic)


def inventory(seal: Seal, *, device: str, agent_version: str,
              runtime: Mapping[str, Any], board: Mapping[str, Any],
              pipelines: Sequence[Mapping[str, Any]], groups: Sequence[str],
              trusted_keys: Sequence[str], boot_id: str | None = None,
              ts: float | None = None) -> OutgoingMessage:
    """The retained ``P/D/inventory`` message: what the device is and what it runs.

    Args:
        seal: the agent's seal.
        device: the device id.
        agent_version: the package version.
        runtime: ``backend`` and ``version`` of the inference runtime (``python`` optional).
        board: ``model``, ``soc``, ``memory_mb``, ``cpu_temp_c`` (None where unknown),
            optionally ``machine`` and ``cpus``.
        pipelines: per pipeline ``name``, ``state``, ``model`` (name/version/sha256),
            ``model_state`` (the updater's last state: state, name, version, reason; or
            None), ``delegate``, ``target`` and ``targets`` (names).
        groups: the fleet groups whose commands the device accepts.
        trusted_keys: key ids of the public keys it verifies updates and commands with.
        boot_id: the transport's boot id.
        ts: the message time; default now.
    """
    entries: list[InventoryPipeline] = []
    for p in pipelines:
        st = p.get("model_state")
        entries.append({
            "name": plain(p.get("name")), "state": plain(p.get("state")),
            "model": _ref(p.get("model")),
            "delegate": plain(p.get("delegate")), "target": plain(p.get("target")),
            "model_state": None if not st else {
                "state": str(st.get("state")), "name": plain(st.get("name")),
                "version": plain(st.get("version")),
                "reason": None if st.get("reason") is None else _text(st["reason"], 1024)},
            "targets": [str(t) for t in p.get("targets") or ()]})
    payload: InventoryPayload = {
        "schema": SCHEMA_IDS["inventory"], "device": device, "ts": _now(ts),
        "agent_version": agent_version, "boot_id": boot_id, "runtime": plain(runtime),
        "board": plain(board), "pipelines": entries, "groups": [str(g) for g in groups],
        "trusted_keys": sorted({str(k) for k in trusted_keys}),
    }
    return seal.issue("inventory", None, payload)


SHADOW_STATES = ("shadowing", "promoted", "rejected", "stopped")
SHADOW_MAX_LABELS = 100  # per-label figures kept (the labels the active model saw most)


def _num(value: Any) -> float | int | None:
    """A finite number, or None (booleans and anything else are dropped)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pick(src: Any, keys: Sequence[str]) -> dict[str, Any]:
    src = src if isinstance(src, Mapping) else {}
    return {k: _num(src.get(k)) for k in keys}


def _keys(model: type, *leave_out: str) -> tuple[str, ...]:
    """The field names of a payload model (so the figures' keys are written there only)."""
    return tuple(k for k in model.__annotations__ if k not in leave_out)


def shadow_figures(figures: Mapping[str, Any]) -> ShadowFigures:
    """The shadow runner's figures reduced to the contract's aggregates: known keys with
    numbers only (a label name is the only text), so nothing of a frame can ride along."""
    raw_lat = figures.get("latency_ms")
    lat: Mapping[str, Any] = raw_lat if isinstance(raw_lat, Mapping) else {}
    sampling = figures.get("sampling")
    out: dict[str, Any] = {
        **_pick(figures, ("frames", "failures", "non_finite", "latency_ratio")),
        "latency_ms": {m: _pick(lat.get(m), _keys(Percentiles)) for m in _keys(ShadowLatency)},
        "sampling": {**_pick(sampling, _keys(ShadowSampling, "when_idle")),
                     "when_idle": bool((sampling or {}).get("when_idle"))},
    }
    det = figures.get("detection")
    if isinstance(det, Mapping):
        raw = det.get("labels")
        labels: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        keep = sorted(labels, key=lambda k: (-int(_num(labels[k].get("active")) or 0), str(k)))
        out["detection"] = {
            **_pick(det, _keys(DetectionAgreement, "labels")),
            "labels": {_text(k, 64): _pick(labels[k], _keys(LabelAgreement))
                       for k in keep[:SHADOW_MAX_LABELS]}}
    for key, model in (("classification", ClassificationAgreement),
                       ("values", ValuesAgreement)):
        part = figures.get(key)
        if isinstance(part, Mapping):
            out[key] = _pick(part, _keys(model))
    # the keys are the models' own (above); the numbers are _num's: int, float or None
    return cast(ShadowFigures, out)


def shadow(seal: Seal, *, device: str, pipeline: str, state: ShadowState,
           candidate: ModelRef | Mapping[str, Any], active: ModelRef | Mapping[str, Any] | None,
           figures: Mapping[str, Any], gate: Mapping[str, Any] | None = None,
           reason: str | None = None, ts: float | None = None) -> OutgoingMessage:
    """The retained ``P/D/model/<pipeline>/shadow`` message: a shadow candidate's agreement
    with the active model on this device's frames (aggregates only).

    Args:
        state: ``shadowing``, ``promoted``, ``rejected`` (the gate failed) or ``stopped``.
        candidate: the candidate model; ``active``: the model serving.
        figures: :meth:`edge_agent.shadow.ShadowRunner.figures` (reduced by
            :func:`shadow_figures`).
        gate: the manifest's ``shadow`` gate, or None.
        reason: why it was rejected or stopped.
    """
    if state not in SHADOW_STATES:
        raise ValueError(f"shadow state {state!r} is not one of {SHADOW_STATES}")
    payload: ShadowPayload = {
        "schema": SCHEMA_IDS["shadow"], "device": device, "pipeline": pipeline, "ts": _now(ts),
        "state": state, "candidate": _ref(candidate), "active": _ref(active),
        "gate": None if gate is None else cast(ShadowGate, _pick(gate, _keys(ShadowGate))),
        "reason": None if reason is None else _text(reason, 1024),
        "figures": shadow_figures(figures),
    }
    return seal.issue("shadow", pipeline, payload)
