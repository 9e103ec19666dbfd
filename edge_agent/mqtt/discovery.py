"""Home Assistant MQTT discovery: pure builders of the retained config messages.

Per pipeline: a count sensor per configured label (``homeassistant.labels``, minus labels the
pipeline's privacy filter never lets out), a presence binary_sensor, per zone a count
sensor per label (the zone's labels, else the configured ones) and an occupancy
binary_sensor, fps and inference-time
sensors (from ``P/D/stats``) and the active model version (from ``P/D/model/<p>/state``); with
camera health on, a ``problem`` binary_sensor each for blocked, moved, out of focus, too dark,
frozen and stream down (from the retained ``P/D/status``). All share one device entry and
take their availability from ``P/D/status``.

Topics: ``<discovery_prefix>/<component>/<device_id>/<pipeline>_<what>/config``. A pipeline
that went away is removed by an empty retained payload on each of its topics:
:class:`AnnouncedTopics` remembers what was announced (in state_dir) so a restart with fewer
pipelines still removes the old entities.

The agent publishes these when it connects and whenever ``<discovery_prefix>/status`` says
``online`` (Home Assistant restarted).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.contract.topics import Topics

logger = logging.getLogger(__name__)

DiscoveryMessage = tuple[str, "dict[str, Any] | None"]
"""``(topic, config)``; config None means remove the entity (empty retained payload)."""

ANNOUNCED_FILE = "ha_discovery.json"


def ha_status_topic(config: AgentConfig) -> str:
    """``<discovery_prefix>/status``: Home Assistant's birth/last will (online/offline)."""
    return f"{config.homeassistant.discovery_prefix}/status"


def ha_came_online(payload: bytes) -> bool:
    """Whether a message on :func:`ha_status_topic` asks for discovery to be re-sent."""
    return payload.strip().lower() == b"online"


def device_entry(config: AgentConfig) -> dict[str, Any]:
    """The ``device`` block every entity shares."""
    return {"identifiers": [f"edge-agent-{config.device_id}"], "name": config.device_id,
            "manufacturer": "edge-agent", "model": "edge-agent", "sw_version": __version__}


def _availability(topics: Topics) -> list[dict[str, str]]:
    return [{"topic": topics.status(), "value_template": "{{ value_json.state }}",
             "payload_available": "online", "payload_not_available": "offline"}]


def _count_expr(label: str) -> str:
    """Jinja: the label's count from ``counts`` (aggregated results) or from ``detections``."""
    lit = json.dumps(label)
    return (f"(value_json.counts[{lit}] if value_json.counts is defined and value_json.counts "
            f"is mapping and {lit} in value_json.counts else (value_json.detections | default([])"
            f" | selectattr('label', 'equalto', {lit}) | list | length))")


def _zone_count_expr(zone: str, label: str) -> str:
    """Jinja: the label's count in ``zone`` from the result's ``zones`` object (0 if absent)."""
    return (f"((value_json.zones | default({{}}))[{json.dumps(zone)}] | default({{}}))"
            f".get({json.dumps(label)}, 0)")


def _published(pipeline: PipelineConfig, label: str) -> bool:
    labels = pipeline.privacy.labels
    return label not in labels.deny and (labels.allow is None or label in labels.allow)


def _stats_expr(pipeline: str, key: str) -> str:
    """Jinja: a pipeline's stats field; ``pipelines`` may be a mapping or a list of dicts."""
    lit = json.dumps(pipeline)
    return ("{% set p = value_json.pipelines %}"
            f"{{% if p is mapping %}}{{{{ p[{lit}].{key} }}}}"
            f"{{% else %}}{{{{ (p | selectattr('name', 'equalto', {lit}) | first).{key} }}}}"
            "{% endif %}")


def counted_labels(config: AgentConfig, pipeline: PipelineConfig) -> list[str]:
    """The configured labels this pipeline may publish (its privacy label filter applied)."""
    labels = pipeline.privacy.labels
    out = []
    for label in config.homeassistant.labels:
        if label in labels.deny or (labels.allow is not None and label not in labels.allow):
            continue
        out.append(label)
    return out


def pipeline_configs(config: AgentConfig, pipeline: PipelineConfig) -> list[DiscoveryMessage]:
    """Every discovery config for one pipeline."""
    topics = Topics(config.mqtt.topic_prefix, config.device_id)
    prefix = config.homeassistant.discovery_prefix
    device = config.device_id
    name = pipeline.name
    common = {"device": device_entry(config), "availability": _availability(topics),
              "origin": {"name": "edge-agent", "sw_version": __version__}}

    def entity(component: str, what: str, body: dict[str, Any]) -> DiscoveryMessage:
        topic = f"{prefix}/{component}/{device}/{name}_{what}/config"
        return topic, {"unique_id": f"edge-agent_{device}_{name}_{what}", **body, **common}

    labels = counted_labels(config, pipeline)
    out = [entity("sensor", f"count_{_slug(label)}", {
        "name": f"{name} {label} count", "state_topic": topics.results(name),
        "value_template": "{{ " + _count_expr(label) + " }}", "state_class": "measurement",
        "icon": "mdi:counter"}) for label in labels]
    if labels:
        total = " + ".join(_count_expr(label) for label in labels)
        out.append(entity("binary_sensor", "presence", {
            "name": f"{name} presence", "state_topic": topics.results(name),
            "value_template": "{{ 'ON' if (" + total + ") > 0 else 'OFF' }}",
            "payload_on": "ON", "payload_off": "OFF", "device_class": "occupancy"}))
    for zone in pipeline.zones:
        zlabels = [lb for lb in (zone.labels or config.homeassistant.labels)
                   if _published(pipeline, lb)]
        zexprs = [_zone_count_expr(zone.name, lb) for lb in zlabels]
        out += [entity("sensor", f"zone_{zone.name}_count_{_slug(lb)}", {
            "name": f"{name} {zone.name} {lb} count", "state_topic": topics.results(name),
            "value_template": "{{ " + expr + " }}", "state_class": "measurement",
            "icon": "mdi:vector-polygon"}) for lb, expr in zip(zlabels, zexprs, strict=True)]
        # occupancy counts every label in the zone (what the result's zone object holds)
        occupied = (f"((value_json.zones | default({{}}))[{json.dumps(zone.name)}] "
                    "| default({})).values() | sum")
        out.append(entity("binary_sensor", f"zone_{zone.name}_occupancy", {
            "name": f"{name} {zone.name} occupancy", "state_topic": topics.results(name),
            "value_template": "{{ 'ON' if (" + occupied + ") > 0 else 'OFF' }}",
            "payload_on": "ON", "payload_off": "OFF", "device_class": "occupancy"}))
    out.append(entity("sensor", "fps", {
        "name": f"{name} fps", "state_topic": topics.stats(),
        "value_template": _stats_expr(name, "fps"), "unit_of_measurement": "fps",
        "state_class": "measurement", "entity_category": "diagnostic"}))
    out.append(entity("sensor", "inference_ms", {
        "name": f"{name} inference time", "state_topic": topics.stats(),
        "value_template": _stats_expr(name, "inference_ms_p50"), "unit_of_measurement": "ms",
        "device_class": "duration", "state_class": "measurement",
        "entity_category": "diagnostic"}))
    out.append(entity("sensor", "model_version", {
        "name": f"{name} model version", "state_topic": topics.model_state(name),
        "value_template": "{{ value_json.active.version if value_json.active else "
                          "value_json.version }}",
        "entity_category": "diagnostic", "icon": "mdi:brain"}))
    if pipeline.camera_health.enabled:
        out.extend(entity("binary_sensor", f"camera_{what}", {
            "name": f"{name} {title}", "state_topic": topics.status(),
            "value_template": _health_expr(name, test), "payload_on": "ON",
            "payload_off": "OFF", "device_class": "problem", "entity_category": "diagnostic"})
            for what, title, test in HEALTH_ENTITIES)
    return out


HEALTH_ENTITIES = (
    ("blocked", "camera blocked", "p.camera_health.state == 'blocked'"),
    ("moved", "camera moved", "p.camera_health.state == 'moved'"),
    ("defocused", "camera out of focus", "p.camera_health.state == 'defocused'"),
    ("dark", "camera too dark", "p.camera_health.state == 'dark'"),
    ("frozen", "camera image frozen", "p.camera_health.state == 'frozen'"),
    ("source", "camera stream down", "p.state == 'reconnecting'"),
)
"""Home Assistant problem entities of a pipeline with camera health on: (what, name, test)."""


def _health_expr(pipeline: str, test: str) -> str:
    """Jinja: ON when ``test`` holds for the pipeline's entry in the retained status."""
    lit = json.dumps(pipeline)
    return ("{% set p = (value_json.pipelines | default([]) | selectattr('name', 'equalto', "
            f"{lit}) | list | first) %}}{{{{ 'ON' if p is defined and p.camera_health is defined "
            f"and ({test}) else 'OFF' }}}}")


def discovery_configs(config: AgentConfig, pipelines: Sequence[PipelineConfig] | None = None,
                      previous: Iterable[str] = ()) -> list[DiscoveryMessage]:
    """Discovery configs for ``pipelines`` (default: the config's), plus removals.

    Args:
        config: the agent config.
        pipelines: the running pipelines.
        previous: topics announced before (:meth:`AnnouncedTopics.load`); any not announced
            now gets ``(topic, None)``, i.e. an empty retained payload that removes it.
    """
    out: list[DiscoveryMessage] = []
    for pipeline in config.pipelines if pipelines is None else pipelines:
        out.extend(pipeline_configs(config, pipeline))
    current = {topic for topic, _ in out}
    out.extend((topic, None) for topic in sorted(set(previous) - current))
    return out


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_") or "label"


class AnnouncedTopics:
    """The discovery topics announced last time, kept in ``state_dir/ha_discovery.json``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / ANNOUNCED_FILE

    def load(self) -> set[str]:
        """What was announced (empty when nothing or unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            logger.warning("cannot read %s (%s): old entities will not be removed", self.path, exc)
            return set()
        return {str(t) for t in data} if isinstance(data, list) else set()

    def save(self, messages: Iterable[DiscoveryMessage]) -> None:
        """Remember the topics that were announced (not the removals)."""
        topics = sorted(topic for topic, body in messages if body is not None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(topics), encoding="utf-8")
        os.replace(tmp, self.path)
