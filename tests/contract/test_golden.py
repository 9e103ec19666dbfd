"""Golden payloads: every outgoing message kind, byte for byte as the device publishes it.

The payloads in ``golden.json`` were recorded from the code paths before the contract package
existed (commit 638c811); nothing that leaves the device may change unless a change is meant,
in which case re-record with ``EDGE_AGENT_WRITE_GOLDEN=1`` and say why in the commit.
A snapshot's JPEG depends on the OpenCV build, so its ``size`` and ``sha256`` are compared
with the JPEG actually sent, and the rest of the metadata byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import PrivacyConfig
from edge_agent.privacy import messages, new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.types import (
    ClassScore,
    Detection,
    HealthEvent,
    Inference,
    ModelRef,
    Result,
    TargetChange,
    TrackEvent,
)

GOLDEN = Path(__file__).with_name("golden.json")
MODEL = ModelRef("detector", 3, "A" * 64)
TS = 1_790_000_000.123


class _Transport:
    """Records publishes; durable ones get seq 1, 2, ... and a fixed-looking id per seq."""

    boot_id = "boot-0123"

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.will: tuple[str, bytes] | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        self.sent.append({"topic": topic, "qos": qos, "retain": retain, "durable": False,
                          "payload": payload})

    def publish_durable(self, pipeline: str, topic: str,
                        render: Callable[[int, str], bytes]) -> int:
        with self._lock:
            self._seq += 1
            body = render(self._seq, f"{self._seq:032x}")
        self.sent.append({"topic": topic, "qos": 1, "retain": False, "durable": True,
                          "payload": body})
        return self._seq

    def set_will(self, topic: str, payload: bytes) -> None:
        self.will = (topic, payload)


def _policy(seal: Any, faces: list[Any] | None = None, **privacy: Any) -> PrivacyPolicy:
    detector = (lambda image: list(faces)) if faces is not None else None
    return PrivacyPolicy(PrivacyConfig.model_validate(privacy), "door", "dev-1", seal,
                         detector, salt=b"s" * 32, clock=lambda: 100.0)


def _result(*dets: Detection, classes: Any = None, values: Any = None,
            image: np.ndarray | None = None, zone_names: tuple[str, ...] = ()) -> Result:
    h, w = image.shape[:2] if image is not None else (720, 1280)
    return Result("door", 7, TS, w, h, MODEL, 11.8123456, Inference(tuple(dets), classes, values),
                  image, zone_names)


def _record() -> dict[str, list[dict[str, Any]]]:
    """Each case -> what the guard handed the transport, in order (payload as text)."""
    cases: dict[str, list[dict[str, Any]]] = {}

    def run(name: str, make: Callable[[Any, EgressGuard], list[Any]],
            will: bool = False) -> None:
        seal, transport = new_seal(), _Transport()
        guard = EgressGuard(transport, "edge-agent", "dev-1", None, seal)
        for msg in make(seal, guard):
            assert (guard.set_will(msg) if will else guard.send(msg)), name
        out = list(transport.sent)
        if will:
            assert transport.will is not None
            out.append({"topic": transport.will[0], "will": True, "payload": transport.will[1]})
        for item in out:
            data = item["payload"]
            if data.startswith(b"\xff\xd8\xff"):
                item["payload"] = "<JPEG>"
                item["jpeg_sha256"] = hashlib.sha256(data).hexdigest()
                item["jpeg_size"] = len(data)
            else:
                item["payload"] = data.decode("utf-8")
        cases[name] = out

    pipelines = [{"name": "door", "state": "running",
                  "model": {"name": "m", "version": 1, "sha256": "c" * 64}, "fps": 9.25}]
    run("status_online", lambda s, g: [messages.status(
        s, device="dev-1", state="online", agent_version="0.1.0", started_at=1_789_999_000.5,
        pipelines=pipelines, runtime={"backend": "ai_edge_litert", "threads": 2},
        boot_id="boot-0123", outbox={"depth": 0, "dropped": 0}, ts=TS)])
    run("status_offline_will", lambda s, g: [messages.status(
        s, device="dev-1", state="offline", agent_version="0.1.0", started_at=None,
        boot_id="boot-0123", ts=TS)], will=True)
    run("stats", lambda s, g: [messages.stats(
        s, device="dev-1", uptime_s=12.3456,
        pipelines={"door": {"fps": 9.5, "inference_ms_p50": np.float32(11.5),
                            "privacy": {"results": 3, "faces_redacted": 0}}},
        outbox={"depth": 1, "dropped": 0}, mqtt={"connected": True, "reconnects": 2},
        egress=g.counters(), cpu_temp_c=float("nan"), ts=TS)])
    run("model_state", lambda s, g: [messages.model_state(
        s, device="dev-1", pipeline="door", state="rolled_back", name="m", version=2,
        sha256="B" * 64, reason="warm-up failed: \ud800 bad", active=ModelRef("m", 1, "c" * 64),
        previous={"name": "m", "version": 2, "sha256": "b" * 64}, progress=1.5, ts=TS)])
    run("inventory", lambda s, g: [messages.inventory(
        s, device="dev-1", agent_version="0.1.0",
        runtime={"backend": "ai_edge_litert", "version": "2.3.0", "python": "3.11.2"},
        board={"model": "Raspberry Pi 5 Model B Rev 1.0", "soc": "brcm,bcm2712",
               "machine": "aarch64", "cpus": 4, "memory_mb": 8064, "cpu_temp_c": 51.25},
        pipelines=[{"name": "door", "state": "running", "model": ModelRef("m", 2, "C" * 64),
                    "model_state": {"state": "active", "name": "m", "version": 2,
                                    "sha256": "c" * 64, "reason": None, "ts": "x"},
                    "delegate": None, "target": "cpu", "targets": ("cpu",)},
                   {"name": "yard", "state": "starting", "model": None, "model_state": None,
                    "delegate": "libedgetpu.so.1", "target": None, "targets": []}],
        groups=("lobby", "floor-2"), trusted_keys=["0123456789abcdef", "0123456789abcdef"],
        boot_id="boot-0123", ts=TS)])
    run("shadow", lambda s, g: [messages.shadow(
        s, device="dev-1", pipeline="door", state="rejected", candidate=ModelRef("m", 3, "D" * 64),
        active=ModelRef("m", 2, "c" * 64),
        figures={"frames": 200, "failures": 0, "non_finite": 1, "latency_ratio": 1.25,
                 "latency_ms": {"active": {"p50": 20.0, "p95": 31.5},
                                "candidate": {"p50": 25.0, "p95": float("nan")}},
                 "sampling": {"every": 5, "when_idle": False, "offered": 1000, "sampled": 200,
                              "dropped": 3, "skipped_busy": 0},
                 "detection": {"iou": 0.5, "precision": 0.1, "recall": 0.1, "mean_iou": 0.97,
                               "active_count": 410, "candidate_count": 410,
                               "mean_count_diff": 0.0, "mean_abs_count_diff": 0.0,
                               "boxes": [[0, 0, 1, 1]],
                               "labels": {"person": {"precision": 0.1, "recall": 0.1,
                                                     "active": 400, "candidate": 10,
                                                     "box": [0.1, 0.2, 0.3, 0.4]},
                                          "tie": {"precision": None, "recall": 0.0,
                                                  "active": 10, "candidate": 0}}},
                 "frame": "<image bytes>"},
        gate={"frames": 200, "min_recall": 0.9, "min_precision": 0.9,
              "max_latency_ratio": None},
        reason="shadow gate failed: precision 0.1 < 0.9; recall 0.1 < 0.9", ts=TS)])
    run("cmd_reply", lambda s, g: [
        messages.cmd_reply(s, device="dev-1", request_id="r-1", ok=True, ts=TS),
        messages.cmd_reply(s, device="dev-1", request_id="r-2", ok=False,
                           error="signature does not verify", ts=TS)])
    run("discovery", lambda s, g: [
        messages.discovery(s, "homeassistant/sensor/dev-1_door_person/config",
                           {"name": "door person", "unique_id": "dev-1_door_person",
                            "state_topic": "edge-agent/dev-1/results/door",
                            "value_template": "{{ value_json.counts.person | default(0) }}",
                            "device": {"identifiers": ["dev-1"], "name": "dev-1"}}),
        messages.discovery(s, "homeassistant/sensor/dev-1_door_cat/config", None)])
    dets = (Detection(0, "person", 0.91234567, (0.1, -0.0, 0.333333333, 1.2),
                      keypoints=((0.5, 0.25), (0.123456, 0.9)), track_id=4,
                      attributes={"plate": "AB-123", "colour": "rot"}),
            Detection(2, "café", 0.5, (0.2, 0.2, 0.4, 0.4)),
            Detection(1, "dog", 0.7, (0.5, 0.5, 0.6, 0.7)))
    run("result_detections", lambda s, g: [
        _policy(s, identifying_fields="hash").result(_result(*dets)),
        _policy(s).result(_result(*dets))])
    run("result_counts", lambda s, g: [_policy(s, aggregate="counts").result(
        _result(*dets, classes=(ClassScore(3, "cat", 0.8),)))])
    run("result_classes_values", lambda s, g: [_policy(s, drop_scores=False).result(_result(
        classes=(ClassScore(3, "cat", 0.8), ClassScore(5, "dog", 0.15)),
        values=np.array([0.5, 1 / 3, 2.0], dtype=np.float32)))])
    ev = TrackEvent("door", TS + 0.5, "enter", 4, "person", 0, 1.23456, (0.1, 0.2, 0.3, 0.4))
    run("event", lambda s, g: [_policy(s).event(ev),
                               _policy(s, aggregate="counts").event(ev)])
    zoned = (Detection(0, "person", 0.9, (0.1, 0.5, 0.2, 0.9), track_id=4,
                       zones=("driveway", "porch")),
             Detection(2, "car", 0.8, (0.5, 0.5, 0.9, 0.9), track_id=5, zones=("driveway",)),
             Detection(1, "dog", 0.7, (0.3, 0.1, 0.4, 0.2), track_id=6))
    names = ("driveway", "porch", "gate")
    run("result_zones", lambda s, g: [
        _policy(s).result(_result(*zoned, zone_names=names)),
        _policy(s, aggregate="counts").result(_result(*zoned, zone_names=names))])
    run("event_zone", lambda s, g: [_policy(s).event(TrackEvent(
        "door", TS + 1, kind, 4, "person", 0, dwell, (0.1, 0.5, 0.2, 0.9), zone="driveway"))
        for kind, dwell in (("zone_enter", 0.2), ("loitering", 30.0), ("zone_leave", 42.5))])
    # camera-health and execution-target events, recorded from their code paths when added
    run("event_health", lambda s, g: [
        _policy(s).health_event(HealthEvent("door", TS, "camera_dark",
                                            (("brightness", 3.14159), ("contrast", 0.5)))),
        _policy(s).health_event(HealthEvent("door", TS, "source_down"))])
    run("event_target", lambda s, g: [_policy(s).target_event(
        TargetChange("edgetpu", "cpu", "invoke timed out", TS))])
    image = np.zeros((64, 96, 3), np.uint8)
    image[16:48, 24:72] = (40, 200, 90)
    run("snapshot", lambda s, g: [
        (p := _policy(s, faces=[], publish_images=True)).result(_result(dets[0], image=image)),
        p.snapshot(_result(dets[0], image=image))])
    return cases


def _comparable(cases: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for name, items in cases.items():
        sent = []
        for item in items:
            item = {k: v for k, v in item.items() if k not in ("jpeg_sha256", "jpeg_size")}
            if item["topic"].endswith("/meta"):
                meta = json.loads(item["payload"])
                assert meta["size"] == items[-2]["jpeg_size"]
                assert meta["sha256"] == items[-2]["jpeg_sha256"]
                item["payload"] = (item["payload"]
                                   .replace(f'"size":{meta["size"]}', '"size":"<SIZE>"')
                                   .replace(meta["sha256"], "<SHA256>"))
            sent.append(item)
        out[name] = sent
    return out


def test_every_message_kind_is_published_byte_for_byte_as_recorded() -> None:
    got = _comparable(_record())
    if os.environ.get("EDGE_AGENT_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1, ensure_ascii=False) + "\n", "utf-8")
    want = json.loads(GOLDEN.read_text("utf-8"))
    kinds = {json.loads(i["payload"]).get("schema") for v in want.values() for i in v
             if i["payload"] not in ("", "<JPEG>")}
    assert len(kinds) >= 9  # every kind with a schema id is among the cases (discovery has none)
    assert set(got) == set(want)
    for name in want:
        assert got[name] == want[name], name
