"""Zones end to end: ``edge-agent run`` with BlazeFace on a generated video, over MQTT.

The video (written with OpenCV): the astronaut's face, cut from the sample photo, slides left
to right across a grey picture (through zone ``left``, a gap, into zone ``right``), stays in
``right`` for 2.8 s and then vanishes. The real model finds it on every frame. A subscriber
sees, in order: ``zone_enter``/``zone_leave`` for ``left``, ``zone_enter`` for ``right``, one
``loitering`` there and a ``zone_leave`` when the track ends; results carry per-detection
zones and counts per zone; and the retained Home Assistant discovery has the zones' entities.
Frame times come from the wall clock (a file paced at 10 fps), so dwell times are checked
loosely here; tests/test_zones.py checks them to the frame on scripted detections.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models, labels_path
from tests.broker import Mosquitto
from tests.e2e.agentproc import AgentProcess, Inbox, subscribe, write_config
from tests.privacy.payload_checks import validate_payload

pytestmark = pytest.mark.slow

SLIDE, STAY, GONE = 52, 28, 12  # frames


def _video(path: Path, photo: Path) -> Path:
    crop = cv2.imread(str(photo))[30:230, 150:310]  # the face and some helmet, 160x200
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 360))
    for i in range(SLIDE + STAY + GONE):
        canvas = np.full((360, 640, 3), 90, np.uint8)
        if i < SLIDE + STAY:
            x = 10 + 9 * min(i, SLIDE - 1)
            canvas[120:320, x:x + 160] = crop
        out.write(canvas)
    out.release()
    return path


def test_zone_events_and_entities_from_a_running_agent(tmp_path: Path,
                                                        broker: Mosquitto) -> None:
    models = ensure_default_models()
    photo = models[DEFAULT_MODEL].parent / "samples" / "astronaut.png"
    zones = [{"name": "left", "polygon": [[0, 0.5], [0.4, 0.5], [0.4, 1], [0, 1]],
              "inertia": 2},
             {"name": "right", "polygon": [[0.6, 0.5], [1, 0.5], [1, 1], [0.6, 1]],
              "inertia": 2, "loiter_s": 1.5}]
    cfg = write_config(tmp_path / "config.yaml", {
        "device_id": "zones-1", "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port},
        "metrics": {"prometheus": {"enabled": False}},
        "homeassistant": {"enabled": True, "labels": ["face"]},
        "pipelines": [{
            "name": "hall",
            "source": {"type": "video", "uri": str(_video(tmp_path / "v.avi", photo)),
                       "fps": 10},
            "model": {"path": str(models[DEFAULT_MODEL]),
                      "labels": str(labels_path(DEFAULT_MODEL)), "decoder": "anchors"},
            "tracking": {"enabled": True}, "zones": zones}],
    })
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["edge-agent/zones-1/#", "homeassistant/#"],
                    inbox)
    agent = AgentProcess(cfg)
    try:
        done = inbox.wait_for(lambda m: sum(t.endswith("/results/hall") for t, _, _ in m)
                              >= SLIDE + STAY + GONE, 120)
        assert done, agent.log()
        assert inbox.wait_for(lambda m: any(b'"zone_leave"' in p and b'"right"' in p
                                            for t, p, _ in m), 10), agent.log()
    finally:
        assert agent.terminate() == 0, agent.log()
        sub.stop()
    for topic, payload, _ in inbox.messages:
        if payload and topic.startswith("edge-agent/"):
            validate_payload(topic, payload)
    events = [e for e in inbox.json("/events/hall") if e["event"].startswith("zone_")
              or e["event"] == "loitering"]
    assert [(e["event"], e["zone"]) for e in events] == [
        ("zone_enter", "left"), ("zone_leave", "left"), ("zone_enter", "right"),
        ("loitering", "right"), ("zone_leave", "right")]
    assert len({e["track_id"] for e in events}) == 1  # one face, one track
    left_leave, right_leave = events[1], events[4]
    # in left for about frames 0..18 (1.8 s at 10 fps), in right from about frame 33 to 79
    # (4.6 s); wall-clock times on a loaded machine only stretch them
    assert left_leave["dwell_s"] >= 1.2
    assert right_leave["dwell_s"] >= 3.0
    assert 1.5 <= events[3]["dwell_s"] < right_leave["dwell_s"]
    results = inbox.json("/results/hall")
    assert all(set(r["zones"]) == {"left", "right"} for r in results)
    for r in results:
        per_zone: dict[str, dict[str, int]] = {"left": {}, "right": {}}
        for d in r["detections"]:
            for z in d["zones"]:
                per_zone[z][d["label"]] = per_zone[z].get(d["label"], 0) + 1
        assert per_zone == r["zones"]
    assert any(r["zones"]["left"] == {"face": 1} for r in results)
    assert any(r["zones"]["right"] == {"face": 1} for r in results)
    # Home Assistant: a count sensor per label and an occupancy sensor per zone
    discovery = {t: json.loads(p) for t, p, _ in inbox.messages
                 if t.startswith("homeassistant/") and p}
    for zone in ("left", "right"):
        count = discovery[f"homeassistant/sensor/zones-1/hall_zone_{zone}_count_face/config"]
        assert count["state_topic"] == "edge-agent/zones-1/results/hall"
        occ = discovery[f"homeassistant/binary_sensor/zones-1/hall_zone_{zone}_occupancy/config"]
        assert occ["device_class"] == "occupancy"
