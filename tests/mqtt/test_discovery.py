"""Home Assistant discovery configs carry what Home Assistant requires, and removals work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, make_config
from edge_agent.mqtt.discovery import (
    AnnouncedTopics,
    discovery_configs,
    ha_came_online,
    ha_status_topic,
)
from tests.conftest import need_module

PIPE = {"source": {"type": "synthetic"}, "model": {"path": "m.tflite"}}


def config(**kw: Any) -> AgentConfig:
    return make_config(
        pipelines=[{"name": "door", **PIPE},
                   {"name": "yard", **PIPE, "privacy": {"labels": {"deny": ["car"]}}}],
        homeassistant={"enabled": True, "labels": ["person", "car"]}, **kw)


def test_every_entity_has_the_fields_home_assistant_requires() -> None:
    msgs = discovery_configs(config())
    assert msgs
    unique = set()
    for topic, body in msgs:
        assert body is not None
        parts = topic.split("/")
        assert parts[0] == "homeassistant" and parts[-1] == "config" and len(parts) == 5
        assert parts[1] in {"sensor", "binary_sensor"}
        for key in ("unique_id", "state_topic", "device", "availability", "name"):
            assert body[key], key
        assert body["device"]["identifiers"] == ["edge-agent-test-device"]
        assert body["availability"][0]["topic"] == "edge-agent/test-device/status"
        assert body["availability"][0]["payload_available"] == "online"
        assert body["state_topic"].startswith("edge-agent/test-device/")
        unique.add(body["unique_id"])
        json.dumps(body)  # serialisable
    assert len(unique) == len(msgs)
    whats = {t.split("/")[3] for t, _ in msgs}
    assert {"door_count_person", "door_count_car", "door_presence", "door_fps",
            "door_inference_ms", "door_model_version", "yard_count_person"} <= whats
    assert "yard_count_car" not in whats  # the pipeline never publishes cars


def test_removed_pipelines_get_empty_retained_configs(tmp_path: Path) -> None:
    store = AnnouncedTopics(tmp_path)
    first = discovery_configs(config())
    store.save(first)
    smaller = make_config(pipelines=[{"name": "door", **PIPE}],
                          homeassistant={"enabled": True, "labels": ["person", "car"]})
    second = discovery_configs(smaller, previous=store.load())
    removals = [t for t, body in second if body is None]
    assert removals and all("/yard_" in t for t in removals)
    assert {t for t, b in second if b is not None} == {t for t, _ in first if "/door_" in t}


def test_ha_status_topic() -> None:
    assert ha_status_topic(config()) == "homeassistant/status"
    assert ha_came_online(b"online") and not ha_came_online(b"offline")


def test_templates_render_against_real_payloads() -> None:
    jinja2 = need_module("jinja2")
    env = jinja2.Environment(autoescape=False)
    by_what = {t.split("/")[3]: b for t, b in discovery_configs(config()) if b}

    def render(what: str, payload: dict[str, Any]) -> str:
        assert by_what[what] is not None
        return env.from_string(by_what[what]["value_template"]).render(value_json=payload)

    detections = {"detections": [{"label": "person"}, {"label": "person"}, {"label": "dog"}]}
    assert render("door_count_person", detections) == "2"
    assert render("door_count_person", {"counts": {"person": 3}}) == "3"
    assert render("door_count_car", {"counts": {"person": 3}}) == "0"
    assert render("door_presence", detections) == "ON"
    assert render("door_presence", {"detections": []}) == "OFF"
    stats_map = {"pipelines": {"door": {"fps": 9.5, "inference_ms_p50": 11.0}}}
    stats_list = {"pipelines": [{"name": "door", "fps": 9.5, "inference_ms_p50": 11.0}]}
    assert render("door_fps", stats_map) == render("door_fps", stats_list) == "9.5"
    assert render("door_inference_ms", stats_list) == "11.0"
    assert render("door_model_version", {"version": 3, "active": {"version": 2}}) == "2"
