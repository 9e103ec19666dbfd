"""Camera health on clips with known faults (covered, turned, blurred, dark, frozen), and its
events through the real policy and egress guard.

Clip times are the clip's own (frame index / fps), so the latency figures do not depend on how
busy the machine is. The 10-minute false-alarm run is ``python -m benchmarks camera_health``
(RESILIENCE.md); here a 2-minute version of each ordinary scene.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.camera_health import CameraHealthMonitor
from edge_agent.config import AgentConfig, CameraHealthConfig, PipelineConfig
from edge_agent.default_models import sample_video_path
from edge_agent.errors import PublishError, SourceError
from edge_agent.mqtt.discovery import discovery_configs
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.privacy.schemas import validate
from edge_agent.types import Frame, HealthEvent
from tests.camera_clips import FAULTS, read_clip, write_clip
from tests.fakes import RecordingTransport, fake_bundle

ONSET_S = 30.0
FAULT_S = 10.0
CFG = CameraHealthConfig(enabled=True)


def run_clip(path: Path, *, live: bool = True,
             cfg: CameraHealthConfig = CFG) -> list[tuple[float, HealthEvent]]:
    monitor = CameraHealthMonitor(cfg, "cam", live=live)
    events: list[tuple[float, HealthEvent]] = []
    for t, image in read_clip(path):
        events.extend((t, ev) for ev in monitor.check(image, t, 1_700_000_000.0 + t))
    assert monitor.checks > 0
    return events


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {fault: write_clip(folder / f"{fault}.avi", fault, onset_s=ONSET_S, fault_s=FAULT_S)
            for fault in [*FAULTS, "none"]}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_is_reported_within_2s_of_its_onset(clips: dict[str, Path],
                                                       fault: str) -> None:
    events = run_clip(clips[fault])
    kinds = [ev.event for _, ev in events]
    assert kinds, f"{fault}: no event at all"
    t_first, first = events[0]
    assert first.event == FAULTS[fault], f"{fault}: events {kinds}"
    assert ONSET_S <= t_first <= ONSET_S + 2.0, f"{fault}: reported at {t_first:.1f}s"
    figures = dict(first.figures)
    assert set(figures) >= {"brightness", "contrast", "sharpness"}
    if fault == "turned":  # stays turned: no recovery within the clip (relearn_s is 60 s)
        assert kinds == ["camera_moved"]
    else:  # back to normal: camera_ok within clear_s (+ a check) of the fault's end
        assert kinds == [FAULTS[fault], "camera_ok"], kinds
        t_ok = events[1][0]
        assert ONSET_S + FAULT_S <= t_ok <= ONSET_S + FAULT_S + CFG.clear_s + 1.0


def test_a_turned_camera_that_stays_is_learned_as_the_new_view(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "turned.avi", "turned", onset_s=25.0, fault_s=10.0,
                      after_s=25.0)
    cfg = CameraHealthConfig(enabled=True, relearn_s=20.0)
    kinds = [(round(t), ev.event) for t, ev in run_clip(clip, cfg=cfg)]
    assert [k for _, k in kinds] == ["camera_moved", "camera_ok"], kinds
    assert kinds[1][0] >= 25 + 20


def test_frozen_frames_are_no_problem_for_a_file_source(clips: dict[str, Path]) -> None:
    assert run_clip(clips["frozen"], live=False) == []


def test_no_false_alarm_on_the_synthetic_scene(clips: dict[str, Path]) -> None:
    assert run_clip(clips["none"]) == []


def test_no_false_alarm_on_two_minutes_of_the_sample_video() -> None:
    path = sample_video_path()
    if not path.exists():
        pytest.skip("run `edge-agent models fetch` for the sample video")
    frames = [image for _, image in read_clip(path)]
    assert len(frames) == 100  # 10 s at 10 fps: three scenes, two cuts, a cut at each loop
    monitor = CameraHealthMonitor(CFG, "cam", live=True)
    events = []
    for n in range(1200):  # 2 minutes, looped: 12 loops, 36 cuts
        events.extend(monitor.check(frames[n % 100], n / 10, n / 10))
    assert monitor.checks >= 500
    assert events == []


# --------------------------------------------------------------------------- messages


def _policy() -> tuple[PrivacyPolicy, Any]:
    seal = new_seal()
    cfg = PipelineConfig.model_validate({"name": "cam", "source": {"type": "synthetic"},
                                         "model": {"path": "m.tflite"}})
    return PrivacyPolicy(cfg.privacy, "cam", "dev", seal), seal


def test_health_events_are_sealed_event_messages_that_validate() -> None:
    policy, _ = _policy()
    ev = HealthEvent("cam", 1_700_000_000.0, "camera_blocked",
                     (("brightness", 80.0), ("contrast", 2.5), ("sharpness", 0.7)))
    msg = policy.health_event(ev)
    assert msg.kind == "event" and msg.pipeline == "cam"
    body = dict(msg.payload)
    assert body["event"] == "camera_blocked"
    assert dict(body["camera"]) == {"brightness": 80.0, "contrast": 2.5, "sharpness": 0.7}
    assert policy.counters()["events_published"] == 1
    validate("event", {**json.loads(json.dumps(body, default=dict)), "id": "x", "seq": 1})
    down = dict(policy.health_event(HealthEvent("cam", 1.0, "source_down")).payload)
    validate("event", {**down, "id": "y", "seq": 2})
    assert "camera" not in down


def test_the_event_schema_still_requires_track_fields_for_enter_and_leave() -> None:
    base = {"schema": "edge-agent/event@1", "id": "x", "seq": 1, "device": "dev",
            "pipeline": "cam", "ts": "2026-01-01T00:00:00.000Z"}
    with pytest.raises(PublishError):
        validate("event", {**base, "event": "enter"})
    with pytest.raises(PublishError):  # a health event carries no track fields
        validate("event", {**base, "event": "camera_dark", "label": "person"})
    validate("event", {**base, "event": "leave", "track_id": 1, "label": "person",
                       "class_id": 0, "dwell_s": 1.5})


def test_config_refuses_camera_health_on_a_sensor_source() -> None:
    with pytest.raises(ValueError, match="camera_health needs an image source"):
        PipelineConfig.model_validate({
            "name": "s", "source": {"type": "sensor", "uri": "x.csv", "window": 4},
            "model": {"path": "m.tflite"}, "camera_health": {"enabled": True}})


def test_home_assistant_problem_entities_only_with_camera_health() -> None:
    def cfg(enabled: bool) -> AgentConfig:
        return AgentConfig.model_validate({
            "device_id": "dev", "homeassistant": {"enabled": True},
            "pipelines": [{"name": "door", "source": {"type": "camera", "uri": 0},
                           "model": {"path": "m.tflite"},
                           "camera_health": {"enabled": enabled}}]})

    on = {t: c for t, c in discovery_configs(cfg(True)) if "_camera_" in t}
    assert len(on) == 6
    blocked = on["homeassistant/binary_sensor/dev/door_camera_blocked/config"]
    assert blocked is not None and blocked["device_class"] == "problem"
    assert blocked["state_topic"] == "edge-agent/dev/status"
    assert not [t for t, _ in discovery_configs(cfg(False)) if "_camera_" in t]


def _render_template(template: str, status: dict[str, Any]) -> str:
    jinja2 = pytest.importorskip("jinja2")
    return str(jinja2.Environment().from_string(template).render(value_json=status)).strip()


def test_problem_entity_templates_read_the_retained_status() -> None:
    cfg = AgentConfig.model_validate({
        "device_id": "dev", "homeassistant": {"enabled": True},
        "pipelines": [{"name": "door", "source": {"type": "camera", "uri": 0},
                       "model": {"path": "m.tflite"}, "camera_health": {"enabled": True}}]})
    configs = dict(discovery_configs(cfg))
    blocked = configs["homeassistant/binary_sensor/dev/door_camera_blocked/config"]
    source = configs["homeassistant/binary_sensor/dev/door_camera_source/config"]
    assert blocked is not None and source is not None
    status = {"state": "online", "pipelines": [
        {"name": "door", "state": "running", "camera_health": {"state": "blocked"}}]}
    assert _render_template(blocked["value_template"], status) == "ON"
    assert _render_template(source["value_template"], status) == "OFF"
    status["pipelines"][0].update(state="reconnecting", camera_health={"state": "ok"})
    assert _render_template(blocked["value_template"], status) == "OFF"
    assert _render_template(source["value_template"], status) == "ON"
    assert _render_template(blocked["value_template"], {"pipelines": []}) == "OFF"


# --------------------------------------------------------------------------- in the pipeline


class _PacedCamera:
    """A live source: textured frames every 20 ms, dark ones from ``dark_from``; the first
    read after frame ``fail_at`` raises SourceError once (the stream dropped)."""

    live = True
    dropped = 0
    bad_lines = 0

    def __init__(self, dark_from: int, fail_at: int) -> None:
        self.dark_from, self.fail_at = dark_from, fail_at
        self.n = 0
        self.failed = False
        self.rng = np.random.default_rng(1)
        self.scene = self.rng.integers(40, 220, (120, 160, 3)).astype(np.uint8)

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Frame:
        time.sleep(0.02)
        if self.n == self.fail_at and not self.failed:
            self.failed = True
            raise SourceError("stream lost")
        noise = self.rng.integers(0, 3, self.scene.shape, dtype=np.uint8)
        image = self.scene // 20 + noise if self.n >= self.dark_from else self.scene + noise
        self.n += 1
        return Frame(index=self.n, ts=time.time(), image=image)

    def close(self) -> None:
        pass


def test_pipeline_publishes_health_and_source_events_through_the_guard() -> None:
    cfg = PipelineConfig.model_validate({
        "name": "cam", "source": {"type": "camera", "uri": 0},
        "model": {"path": "fake.tflite"},
        "camera_health": {"enabled": True, "hold_s": 0.3, "interval_s": 0.05}})
    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    policy = PrivacyPolicy(cfg.privacy, "cam", "dev", seal)
    source = _PacedCamera(dark_from=40, fail_at=20)
    pipe = Pipeline(cfg, fake_bundle(), source_factory=lambda _c: source, policy=policy,
                    send=guard.send, health=CameraHealthMonitor(cfg.camera_health, "cam"))
    pipe.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pipe.health_state != "dark":
            time.sleep(0.05)
    finally:
        pipe.stop()
    events = [json.loads(m.payload) for m in transport.messages if "/events/" in m.topic]
    assert [e["event"] for e in events] == ["source_down", "source_up", "camera_dark"]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))  # durable, in order (the fake counts seq per transport)
    assert events[2]["camera"]["brightness"] < 20
    assert pipe.status()["camera_health"]["state"] == "dark"
    assert not [t for t in threading.enumerate() if t.name.startswith("cam-") and t.is_alive()]
