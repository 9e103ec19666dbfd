"""End-to-end: ``edge-agent run`` as a subprocess against a real mosquitto.

Results that match the schema arrive over MQTT; SIGTERM gives exit 0 and the retained status
``offline``. Several pipelines run in one process. With default settings nothing a subscriber
to ``#`` receives carries image data, and every payload validates against its schema.
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
from tests.privacy.payload_checks import assert_no_image_data, validate_payload

pytestmark = pytest.mark.slow


def _video(path: Path, frames: int = 30) -> Path:
    """A real MJPG video with a face-sized bright ellipse moving over a textured background."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    rng = np.random.default_rng(0)
    bg = rng.integers(60, 120, (240, 320, 3), dtype=np.uint8)
    for i in range(frames):
        img = bg.copy()
        cv2.ellipse(img, (60 + i * 5, 120), (30, 40), 0, 0, 360, (180, 200, 230), -1)
        w.write(img)
    w.release()
    return path


def _images(folder: Path) -> Path:
    folder.mkdir()
    for i in range(3):
        img = np.full((200, 300, 3), 40 * i, np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.fixture(scope="module")
def model() -> Path:
    return ensure_default_models()[DEFAULT_MODEL]


def test_run_publishes_results_and_stops_cleanly(tmp_path: Path, broker: Mosquitto,
                                                 model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {
        "device_id": "e2e-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "stats_interval_s": 1},
        "metrics": {"prometheus": {"port": 0}},
        "pipelines": [
            {"name": "door", "source": {"type": "video", "uri": str(_video(tmp_path / "v.avi")),
                                         "loop": True, "fps": 20},
             "model": {"path": str(model), "labels": str(labels_path(DEFAULT_MODEL))}},
            {"name": "yard", "source": {"type": "images", "uri": str(_images(tmp_path / "img")),
                                         "fps": 5, "loop": True},
             "model": {"path": str(model)}},
        ],
    })
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["#"], inbox)
    agent = AgentProcess(cfg)
    try:
        ok = inbox.wait_for(lambda m: sum(t.endswith("/results/door") for t, _, _ in m) >= 10
                            and sum(t.endswith("/results/yard") for t, _, _ in m) >= 3
                            and any(t.endswith("/stats") for t, _, _ in m), 60)
        assert ok, agent.log()
    finally:
        code = agent.terminate()
    assert code == 0, agent.log()
    # the start-up check's runtimes serve the pipelines: each model file is loaded once
    loads = [line for line in agent.log().splitlines() if "target cpu: loaded" in line]
    assert sum(model.name in line for line in loads) == 2, "\n".join(loads)
    assert inbox.wait_for(lambda m: any(t.endswith("/status") and b'"offline"' in p
                                        for t, p, _ in m), 10)
    sub.stop()

    # every payload validates and carries no image data
    for topic, payload, _ in inbox.messages:
        assert topic.startswith("edge-agent/e2e-1/"), topic
        if payload:
            validate_payload(topic, payload)
            assert_no_image_data(payload)
    door = inbox.json("/results/door")
    seqs = [r["seq"] for r in door]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq must rise by one"
    assert len({r["id"] for r in door}) == len(door)
    r = door[0]
    assert r["schema"] == "edge-agent/result@1" and r["device"] == "e2e-1"
    assert r["frame"]["width"] == 320 and r["frame"]["height"] == 240
    assert r["model"]["sha256"] and r["model"]["version"] == 0
    statuses = inbox.json("/status")
    online = [s for s in statuses if s["state"] == "online"]
    assert online and {p["name"] for p in online[-1]["pipelines"]} == {"door", "yard"}
    runtime = online[-1]["pipelines"][0]["runtime"]
    assert runtime["backend"] and runtime["version"]
    # thermal pacing reports in status and stats (the factor is 1.0 unless this machine is hot)
    thermal = online[-1]["pipelines"][0]["thermal"]
    assert 0.0 < thermal["factor"] <= 1.0 and thermal["enabled"] is True
    stats = inbox.json("/stats")[-1]["pipelines"]["door"]
    assert 0.0 < stats["thermal_factor"] <= 1.0 and stats["thermal_skipped"] == 0
    # CPU time per result (process-wide, over the last interval); energy only where measurable
    per_result = [m["pipelines"]["door"]["cpu_ms_per_result"] for m in inbox.json("/stats")]
    assert any(v is not None and v > 0 for v in per_result), per_result
    assert "energy_mj_per_result" in stats and "power_w" in stats

    # a new subscriber sees the retained offline status
    late = Inbox()
    sub2 = subscribe(broker.host, broker.port, ["edge-agent/e2e-1/status"], late)
    try:
        assert late.wait_for(lambda m: bool(m), 30)
        assert json.loads(late.messages[0][1])["state"] == "offline"
        assert late.messages[0][2] is True
    finally:
        sub2.stop()


def test_seq_survives_restart(tmp_path: Path, broker: Mosquitto, model: Path) -> None:
    cfg = write_config(tmp_path / "config.yaml", {
        "device_id": "e2e-2",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port},
        "metrics": {"prometheus": {"enabled": False}},
        "pipelines": [{"name": "door", "source": {"type": "video", "fps": 0,
                                                   "uri": str(_video(tmp_path / "v.avi", 12))},
                       "model": {"path": str(model)}}],
    })
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["edge-agent/e2e-2/results/#"], inbox)
    try:
        for run in (1, 2):
            agent = AgentProcess(cfg)
            ok = inbox.wait_for(lambda m, n=12 * run: len(m) >= n, 60)
            assert agent.terminate() == 0, agent.log()
            assert ok, agent.log()
    finally:
        sub.stop()
    results = inbox.json("/results/door")
    assert [r["seq"] for r in results] == list(range(1, 25))
    assert [r["frame"]["index"] for r in results] == list(range(12)) * 2
