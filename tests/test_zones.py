"""Zones on a scripted scene with ground truth, through the real pipeline, tracker, zone
tracker, privacy policy and egress guard (schemas checked by the guard).

The scene (10 fps, 200 frames; detections scripted per frame, the frame index carried by the
frame's grey level through the fake runtime): a person walks left to right through the
``walkway`` zone, a gap and the ``bay`` zone, then leaves the picture; a second person stands
at the walkway's edge (a two-frame dip in, a one-frame and a two-frame step out while in:
inertia 3 must hide all three); a car drives into the bay and loiters there for 10.8 s; a dog
crosses the bay (not one of its labels) and the walkway.

Ground truth is computed from the script with plain rectangle comparisons (the zones are
axis-aligned rectangles), independently of the polygon code: a stay starts at the first frame
of an inside run of at least ``inertia`` frames, absorbs outside gaps shorter than ``inertia``,
and ends at its last inside frame.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np
import pytest

from edge_agent.bundle import ModelBundle
from edge_agent.config import PipelineConfig, ZoneConfig, make_config
from edge_agent.decoders.labels import load_labels
from edge_agent.errors import ConfigError
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.runtime.preprocess import Preprocessor
from edge_agent.tracking import IouTracker
from edge_agent.types import Detection, Frame, Inference, ModelRef
from edge_agent.zones import ZoneTracker, anchor_point
from tests.fakes import FakeRuntime, RecordingTransport

FPS = 10
N = 200
T0 = 1_700_000_000.0
INERTIA = 3
LOITER_S = 5.0
# axis-aligned rectangles (x0, y0, x1, y1); edges off the scripted grid, so no ties
ZONES = {"walkway": (0.105, 0.5, 0.455, 1.0), "bay": (0.555, 0.5, 0.905, 1.0)}
ZONE_LABELS: dict[str, set[str] | None] = {"walkway": None, "bay": {"person", "car"}}
Obj = tuple[str, str, tuple[float, float, float, float]]  # (name, label, box)


def _box(ax: float, ay: float, w: float, h: float) -> tuple[float, float, float, float]:
    """The box whose bottom centre is (ax, ay)."""
    return (ax - w / 2, ay - h, ax + w / 2, ay)


def scene(i: int) -> list[Obj]:
    """The objects in frame ``i``."""
    objs: list[Obj] = []
    if i < 120:  # person 1 walks left to right and out of the picture
        objs.append(("walker", "person", _box(0.02 + 0.008 * i, 0.8, 0.08, 0.3)))
    if 20 <= i < 80:  # person 2 at the walkway's left edge
        inside = (22 <= i <= 23) or (30 <= i <= 59 and i not in (40, 45, 46))
        objs.append(("stander", "person", _box(0.11 if inside else 0.1, 0.95, 0.06, 0.2)))
    if 50 <= i < 170:  # a car drives into the bay and stays
        y = 0.3 + 0.02 * (i - 50) if i < 70 else 0.7
        objs.append(("car", "car", _box(0.7, y, 0.2, 0.2)))
    if 100 <= i < 197:  # a dog crosses right to left
        objs.append(("dog", "dog", _box(0.98 - 0.01 * (i - 100), 0.6, 0.06, 0.1)))
    return objs


def _inside(zone: str, label: str, box: tuple[float, float, float, float]) -> bool:
    labels = ZONE_LABELS[zone]
    if labels is not None and label not in labels:
        return False
    x0, y0, x1, y1 = ZONES[zone]
    ax, ay = (box[0] + box[2]) / 2, box[3]
    return x0 <= ax <= x1 and y0 <= ay <= y1


Expected = tuple[list[tuple[str, str, str, int, float]], list[dict[str, dict[str, int]]]]


def ground_truth() -> Expected:
    """Expected events ``(event, object, zone, frame, dwell_s)`` and per-frame zone counts."""
    events: list[tuple[str, str, str, int, float]] = []
    counts: list[dict[str, dict[str, int]]] = [{z: {} for z in ZONES} for _ in range(N)]
    names = {name: label for i in range(N) for name, label, _ in scene(i)}
    for name, label in names.items():
        seen = {i: box for i in range(N) for n, _, box in scene(i) if n == name}
        last_seen = max(seen)
        for zone in ZONES:
            flags = [i in seen and _inside(zone, label, seen[i]) for i in range(N)]
            i = 0
            while i < N:
                if not (flags[i] and all(flags[i:i + INERTIA])):
                    i += 1
                    continue
                start, last = i, i
                j = i
                while j < N and j <= last_seen:
                    if flags[j]:
                        last = j
                    elif j - last >= INERTIA:
                        break
                    j += 1
                enter = start + INERTIA - 1
                events.append(("zone_enter", name, zone, enter, (enter - start) / FPS))
                if LOITER_S and ZONE_LABELS[zone] is not None and last - start >= LOITER_S * FPS:
                    at = start + int(LOITER_S * FPS)
                    events.append(("loitering", name, zone, at, (at - start) / FPS))
                # left the zone, or the track ended first: the tracker's leave (6th frame unseen)
                leave = last + INERTIA if last + INERTIA <= last_seen else last_seen + 6
                events.append(("zone_leave", name, zone, leave, (last - start) / FPS))
                for k in range(enter, min(leave, last_seen + 1)):
                    if k in seen:
                        counts[k][zone][label] = counts[k][zone].get(label, 0) + 1
                i = j
    return events, counts


class SceneSource:
    """The scene as frames: uniform grey level = frame index (the fake runtime's mean)."""

    live = False
    dropped = 0
    bad_lines = 0

    def __init__(self) -> None:
        self.i = 0

    def open(self) -> None:
        pass

    def read(self, timeout: float) -> Frame:
        if self.i >= N:
            raise EOFError
        i, self.i = self.i, self.i + 1
        return Frame(i, T0 + i / FPS, image=np.full((24, 32, 3), i, np.uint8))

    def close(self) -> None:
        pass


class SceneDecoder:
    """Frame index (the runtime's output) -> that frame's scripted detections."""

    kind = "scene"
    letterbox = False
    classes: ClassVar[dict[str, int]] = {"person": 0, "car": 2, "dog": 16}

    def decode(self, outputs: list[Any], transform: Any) -> Inference:
        i = round(float(outputs[0].reshape(-1)[0]))
        return Inference(detections=tuple(
            Detection(self.classes[label], label, 0.9, box) for _, label, box in scene(i)))


def _zone_cfgs(loiter: float | None = LOITER_S) -> list[dict[str, Any]]:
    out = []
    for name, (x0, y0, x1, y1) in ZONES.items():
        zone: dict[str, Any] = {"name": name, "polygon": [[x0, y0], [x1, y0], [x1, y1],
                                                          [x0, y1]], "inertia": INERTIA}
        if ZONE_LABELS[name] is not None:
            zone["labels"] = sorted(ZONE_LABELS[name] or ())
            zone["loiter_s"] = loiter
        out.append(zone)
    return out


def run_scene(publish: str = "every_frame") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cfg = PipelineConfig.model_validate({
        "name": "cam", "source": {"type": "synthetic", "fps": 0},
        "model": {"path": "fake.tflite"}, "publish": publish,
        "tracking": {"enabled": True, "min_hits": 2, "max_missed": 5},
        "zones": _zone_cfgs()})
    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)  # validates every schema
    policy = PrivacyPolicy(cfg.privacy, "cam", "dev", seal)
    runtime = FakeRuntime(8)
    pre = Preprocessor(runtime.signature.inputs[0], letterbox=False, color="rgb", buffers=5)
    bundle = ModelBundle(runtime, pre, SceneDecoder(), load_labels(None),
                         ModelRef("scene", 0, "0" * 64), runtime.path, None)
    pipe = Pipeline(cfg, bundle, source_factory=lambda _c: SceneSource(), policy=policy,
                    send=guard.send, tracker=IouTracker(cfg.tracking, "cam"),
                    zones=ZoneTracker(cfg.zones, "cam"))
    pipe.start()
    pipe.join(60)
    pipe.stop()
    assert pipe.state == "finished"
    results = [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]
    events = [json.loads(m.payload) for m in transport.messages if "/events/" in m.topic]
    return results, events


def _names_by_track(results: list[dict[str, Any]]) -> dict[int, str]:
    """Track id -> scripted object, by matching each frame's boxes to the script."""
    out: dict[int, str] = {}
    for r in results:
        objs = scene(r["frame"]["index"])
        for d in r["detections"]:
            if "track_id" not in d:
                continue
            name = min(objs, key=lambda o: sum(abs(a - b) for a, b in zip(o[2], d["box"],
                                                                           strict=True)))[0]
            assert out.setdefault(d["track_id"], name) == name, "a track switched objects"
    return out


def test_zone_events_and_counts_match_ground_truth() -> None:
    want_events, want_counts = ground_truth()
    kinds = [e[0] for e in want_events]
    # the scene exercises every case: enters and leaves in both zones, one loitering, a
    # leave by the track ending, and excluded labels (dog in the bay)
    assert kinds.count("zone_enter") == kinds.count("zone_leave") == 5
    assert kinds.count("loitering") == 1
    results, events = run_scene()
    assert [r["frame"]["index"] for r in results] == list(range(N))
    tracks = _names_by_track(results)
    assert sorted(set(tracks.values())) == ["car", "dog", "stander", "walker"]
    zone_events = [e for e in events if e["event"] in {"zone_enter", "zone_leave", "loitering"}]
    got = sorted((e["event"], tracks[e["track_id"]], e["zone"], round(_frame_of(e)),
                  e["dwell_s"]) for e in zone_events)
    assert len(got) == len(want_events), (got, want_events)
    for (ge, gn, gz, gf, gd), (we, wn, wz, wf, wd) in zip(
            got, sorted(want_events), strict=True):
        assert (ge, gn, gz) == (we, wn, wz)
        assert abs(gf - wf) <= 1, f"{ge} {gn} {gz}: frame {gf}, expected {wf}"
        assert abs(gd - wd) <= 1 / FPS + 1e-6, f"{ge} {gn} {gz}: dwell {gd}, expected {wd}"
    for r in results:
        i = r["frame"]["index"]
        assert r["zones"] == want_counts[i], f"frame {i}"
        # each detection names its zones, and they add up to the counts per zone
        summed: dict[str, dict[str, int]] = {z: {} for z in ZONES}
        for d in r["detections"]:
            for z in d["zones"]:
                summed[z][d["label"]] = summed[z].get(d["label"], 0) + 1
        assert summed == r["zones"]


def _frame_of(event: dict[str, Any]) -> float:
    from datetime import datetime

    ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
    return (ts - T0) * FPS


def test_on_change_publishes_when_an_object_moves_between_zones() -> None:
    results, _ = run_scene(publish="on_change")
    assert results, "nothing published"
    published = {r["frame"]["index"] for r in results}
    _, want_counts = ground_truth()
    changes = [i for i in range(1, N) if want_counts[i] != want_counts[i - 1]]
    assert changes
    assert set(changes) <= published


def test_zones_need_tracking() -> None:
    from edge_agent.config import parse_config

    text = """
pipelines:
  - name: cam
    source: {type: synthetic}
    model: {path: m.tflite}
    zones:
      - {name: door, polygon: [[0, 0], [1, 0], [1, 1]]}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert any("zones need tracking" in p and "pipelines[0]" in p for p in info.value.problems)


@pytest.mark.parametrize(("zone", "problem"), [
    ({"name": "Door", "polygon": [[0, 0], [1, 0], [1, 1]]}, "zones[0].name"),
    ({"name": "door", "polygon": [[0, 0], [1, 0]]}, "zones[0].polygon"),
    ({"name": "door", "polygon": [[0, 0], [1.5, 0], [1, 1]]}, "zones[0].polygon"),
    ({"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]], "inertia": 0}, "zones[0].inertia"),
])
def test_zone_config_errors_name_the_key(zone: dict[str, Any], problem: str) -> None:
    from edge_agent.config import parse_config

    text = json.dumps({"pipelines": [{
        "name": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"},
        "tracking": {"enabled": True}, "zones": [zone]}]})
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_duplicate_zone_names_are_refused() -> None:
    zone = {"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]]}
    with pytest.raises(ValueError, match="duplicate zone name door"):
        PipelineConfig.model_validate({
            "name": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"},
            "tracking": {"enabled": True}, "zones": [zone, zone]})


@pytest.mark.parametrize(("anchor", "point"), [
    ("bottom_center", (0.3, 0.8)), ("center", (0.3, 0.5)), ("top_center", (0.3, 0.2))])
def test_anchor_points(anchor: str, point: tuple[float, float]) -> None:
    assert anchor_point((0.2, 0.2, 0.4, 0.8), anchor) == pytest.approx(point)


def test_anchor_decides_membership() -> None:
    """A box whose centre is in the zone but whose feet are not is outside by default."""
    zone = ZoneConfig.model_validate({"name": "top", "polygon": [[0, 0], [1, 0], [1, 0.5],
                                                                 [0, 0.5]], "inertia": 1})
    centred = ZoneConfig.model_validate({**zone.model_dump(), "name": "top2",
                                         "anchor": "center"})
    zt = ZoneTracker([zone, centred], "cam")
    det = Detection(0, "person", 0.9, (0.4, 0.3, 0.6, 0.6), track_id=1)
    (out,), events = zt.update([det], T0)
    assert out.zones == ("top2",)
    assert [(e.event, e.zone) for e in events] == [("zone_enter", "top2")]


def test_policy_drops_denied_labels_from_zone_counts_and_events() -> None:
    from edge_agent.config import PrivacyConfig
    from edge_agent.types import Result, TrackEvent

    seal = new_seal()
    policy = PrivacyPolicy(PrivacyConfig(labels={"deny": ["dog"]}), "cam", "dev", seal)
    dets = (Detection(0, "person", 0.9, (0.1, 0.1, 0.2, 0.9), track_id=1, zones=("a",)),
            Detection(16, "dog", 0.9, (0.3, 0.1, 0.4, 0.9), track_id=2, zones=("a", "b")))
    result = Result("cam", 0, T0, 32, 24, ModelRef("m", 0, "0" * 64), 1.0,
                    Inference(detections=dets), zone_names=("a", "b"))
    payload = policy.result(result).payload
    assert payload["zones"] == {"a": {"person": 1}, "b": {}}
    assert [d["zones"] for d in payload["detections"]] == [["a"]]
    ev = TrackEvent("cam", T0, "zone_enter", 2, "dog", 16, 0.2, dets[1].box, zone="a")
    assert policy.event(ev) is None
    ok = TrackEvent("cam", T0, "loitering", 1, "person", 0, 5.0, dets[0].box, zone="a")
    msg = policy.event(ok)
    assert msg is not None and msg.payload["zone"] == "a"


def test_home_assistant_zone_entities() -> None:
    from edge_agent.mqtt.discovery import discovery_configs

    cfg = make_config(homeassistant={"enabled": True, "labels": ["person"]}, pipelines=[{
        "name": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"},
        "tracking": {"enabled": True}, "zones": _zone_cfgs()}])
    msgs = dict(discovery_configs(cfg))
    base = "homeassistant/{}/test-device/cam_zone_{}/config"
    # walkway (no labels of its own): the configured labels; bay: its own labels
    for comp, what in (("sensor", "walkway_count_person"), ("sensor", "bay_count_person"),
                       ("sensor", "bay_count_car"), ("binary_sensor", "walkway_occupancy"),
                       ("binary_sensor", "bay_occupancy")):
        body = msgs[base.format(comp, what)]
        assert body is not None
        assert body["state_topic"] == "edge-agent/test-device/results/cam"
    assert base.format("sensor", "walkway_count_car") not in msgs
    occupancy = msgs[base.format("binary_sensor", "bay_occupancy")]
    assert occupancy is not None and occupancy["device_class"] == "occupancy"


def test_home_assistant_templates_render_zone_values() -> None:
    """The templates, rendered with Jinja like Home Assistant does, read the result's zones."""
    jinja2 = pytest.importorskip("jinja2")
    from edge_agent.mqtt.discovery import discovery_configs

    cfg = make_config(homeassistant={"enabled": True, "labels": ["person"]}, pipelines=[{
        "name": "cam", "source": {"type": "synthetic"}, "model": {"path": "m.tflite"},
        "tracking": {"enabled": True}, "zones": _zone_cfgs()}])
    msgs = dict(discovery_configs(cfg))
    env = jinja2.Environment(autoescape=False)

    def render(what: str, comp: str, value: dict[str, Any]) -> str:
        body = msgs[f"homeassistant/{comp}/test-device/cam_zone_{what}/config"]
        assert body is not None
        return env.from_string(body["value_template"]).render(value_json=value).strip()

    value = {"zones": {"walkway": {"person": 2}, "bay": {"car": 1}}}
    assert render("walkway_count_person", "sensor", value) == "2"
    assert render("bay_count_person", "sensor", value) == "0"
    assert render("bay_count_car", "sensor", value) == "1"
    assert render("bay_occupancy", "binary_sensor", value) == "ON"
    assert render("bay_occupancy", "binary_sensor", {"zones": {"bay": {}}}) == "OFF"
    assert render("walkway_occupancy", "binary_sensor", {"counts": {}}) == "OFF"

