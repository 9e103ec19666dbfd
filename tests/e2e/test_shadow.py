"""Shadow evaluation against the real daemon: ``edge-agent run`` as a subprocess, a real
mosquitto, the default face models, signed manifests and commands over MQTT.

* ``model/shadow`` with a manifest whose gate cannot hold (latency ratio 0.001) ends the
  candidate ``rejected`` with its figures on the retained ``model/<pipeline>/shadow``; the
  active model keeps serving.
* ``model/shadow`` without a gate publishes figures; a signed ``model/promote`` makes the
  candidate active through the normal swap; results then name it.
* A capture of ``#`` over the whole run carries no image data and no per-frame output of the
  candidate: no result names the candidate before it was promoted, and the shadow messages
  hold aggregates only (their schema is closed).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.e2e.agentproc import Inbox, subscribe
from tests.e2e.update_harness import PIPELINE, UpdateDevice, write_scene_video
from tests.privacy.payload_checks import validate_payload

pytestmark = pytest.mark.slow

SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"


def _shadow_cmd(dev: UpdateDevice, model: Path, version: int,
                gate: dict | None = None, every: int = 2) -> str:
    m = build_manifest(name="face-full", version=version, sha256=sha256_file(model),
                       size=model.stat().st_size, key=dev.key, url=model.as_uri(),
                       labels=labels_path(FULL).read_text(),
                       extra={"shadow": gate} if gate is not None else None)
    rid = uuid.uuid4().hex
    cmd = {"request_id": rid, "pipeline": PIPELINE, "manifest": dict(m.raw), "every": every}
    assert dev.sub.publish(f"{dev.prefix}/cmd/model/shadow", json.dumps(cmd).encode())
    return rid


def _shadow_msgs(capture: Inbox, prefix: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in capture.messages
            if t == f"{prefix}/model/{PIPELINE}/shadow"]


def test_shadow_gate_rejects_then_operator_promotes(tmp_path: Path, broker: Mosquitto) -> None:
    models = ensure_default_models()
    short, full = models[SHORT], models[FULL]
    video = write_scene_video(tmp_path / "scene.avi", 30)
    dev = UpdateDevice(tmp_path, broker, short, decoder="anchors", labels=labels_path(SHORT),
                       video=video, fps=30, updates={"watch_inferences": 0,
                                                     "watch_seconds": 0})
    capture = Inbox()
    everything = subscribe(broker.host, broker.port, ["#"], capture)
    full_sha = sha256_file(full)
    try:
        agent = dev.start()
        dev.wait_results(10, sha=dev.configured_sha)

        # 1. a gate that cannot hold: rejected with the figures, the active model serves on
        manifest = tmp_path / "full-v1.json"
        signed = dev.cli("sign", str(full), "--key", str(dev.key_path), "--name", "face-full",
                         "--version", "1", "--labels", str(labels_path(FULL)), "--url",
                         full.as_uri(), "--shadow-frames", "5",
                         "--shadow-max-latency-ratio", "0.001", "--out", str(manifest))
        assert signed.returncode == 0, signed.stderr
        assert json.loads(manifest.read_text())["shadow"] == {"frames": 5,
                                                              "max_latency_ratio": 0.001}
        shadowed = dev.cli("shadow", str(manifest), "--pipeline", PIPELINE, "--device",
                           dev.device_id, "--broker", dev.broker_arg, "--every", "2",
                           "--timeout", "60")
        assert shadowed.returncode == 0, shadowed.stdout + shadowed.stderr + dev.log()
        dev.wait("the shadow candidate rejected", lambda: any(
            m["state"] == "rejected" for m in _shadow_msgs(capture, dev.prefix)), 90)
        rejected = next(m for m in _shadow_msgs(capture, dev.prefix)
                        if m["state"] == "rejected")
        assert rejected["candidate"]["sha256"] == full_sha
        assert rejected["figures"]["frames"] >= 5
        assert "latency ratio" in rejected["reason"], rejected
        dev.wait_results(5, since=dev.mark(), sha=dev.configured_sha)

        # 2. no gate: figures go out; a signed promote makes the candidate active
        mark = dev.mark()
        rid = _shadow_cmd(dev, full, 2)
        assert dev.wait_reply(rid, mark, 60)["ok"], dev.log()
        dev.wait("shadow figures with compared frames", lambda: any(
            m["state"] == "shadowing" and m["candidate"]["version"] == 2
            and m["figures"]["frames"] >= 3 for m in _shadow_msgs(capture, dev.prefix)), 90)
        before_promote = len(capture.messages)
        mark = dev.mark()
        promoted = dev.cli("promote", "--device", dev.device_id, "--pipeline", PIPELINE,
                           "--broker", dev.broker_arg, "--key", str(dev.key_path),
                           "--sha256", full_sha, "--timeout", "60")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr + dev.log()
        dev.wait_results(5, since=mark, sha=full_sha)
        dev.wait("the final shadow message: promoted", lambda: any(
            m["state"] == "promoted" for m in _shadow_msgs(capture, dev.prefix)), 30)

        # 3. a gate that holds: the device promotes by itself (here back to the short-range
        # model, as version 3)
        mark = dev.mark()
        m = build_manifest(name="face-short", version=3, sha256=dev.configured_sha,
                           size=short.stat().st_size, key=dev.key, url=short.as_uri(),
                           labels=labels_path(SHORT).read_text(),
                           extra={"shadow": {"frames": 3, "max_latency_ratio": 100}})
        rid = uuid.uuid4().hex
        assert dev.sub.publish(f"{dev.prefix}/cmd/model/shadow", json.dumps(
            {"request_id": rid, "pipeline": PIPELINE, "manifest": dict(m.raw),
             "every": 1}).encode())
        assert dev.wait_reply(rid, mark, 60)["ok"], dev.log()
        dev.wait_results(5, since=dev.mark(), sha=dev.configured_sha)
        auto = [s for s in _shadow_msgs(capture, dev.prefix)
                if s["candidate"]["version"] == 3 and s["state"] == "promoted"]
        assert auto and auto[-1]["figures"]["frames"] >= 3, _shadow_msgs(capture, dev.prefix)
        assert "gate held" in auto[-1]["reason"]
        assert agent.proc.poll() is None
    finally:
        dev.close()
        everything.stop()

    # the whole run's capture: contract-valid, no image data, no candidate output per frame
    shadow_seen = 0
    for i, (topic, payload, _retained) in enumerate(capture.messages):
        assert not payload.startswith(b"\xff\xd8"), topic  # no JPEG
        if "/cmd/" in topic:
            continue  # the test's own commands (they carry the manifest)
        validate_payload(topic, payload)
        assert b"data:image" not in payload and len(payload) < 16 * 1024, topic
        if topic.endswith(f"/results/{PIPELINE}") and i < before_promote:
            assert json.loads(payload)["model"]["sha256"] != full_sha, \
                "a result of the candidate before it was promoted"
        if topic.endswith("/shadow"):
            shadow_seen += 1
            text = payload.decode()
            assert '"box' not in text and '"detections"' not in text and "score" not in text
    assert shadow_seen >= 3


def test_a_shadow_survives_a_restart_of_the_daemon(tmp_path: Path, broker: Mosquitto) -> None:
    """SIGTERM while shadowing: the retained message says it resumes; the next ``edge-agent
    run`` on the same state continues the totals and the candidate can still be promoted. A
    candidate whose stored file changed while the daemon was down is reported ended."""
    models = ensure_default_models()
    short, full = models[SHORT], models[FULL]
    video = write_scene_video(tmp_path / "scene.avi", 30)
    dev = UpdateDevice(tmp_path, broker, short, decoder="anchors", labels=labels_path(SHORT),
                       video=video, fps=30, updates={"watch_inferences": 0,
                                                     "watch_seconds": 0})
    capture = Inbox()
    everything = subscribe(broker.host, broker.port, [f"{dev.prefix}/model/#"], capture)
    full_sha = sha256_file(full)

    def since(n: int) -> list[dict]:
        return _shadow_msgs(capture, dev.prefix)[n:]

    try:
        dev.start()
        dev.wait_results(5, sha=dev.configured_sha)
        mark = dev.mark()
        # a gate far from decided: it must come back with the shadow
        rid = _shadow_cmd(dev, full, 2, gate={"frames": 1000000, "max_latency_ratio": 100},
                          every=1)
        assert dev.wait_reply(rid, mark, 60)["ok"], dev.log()
        dev.wait("shadow figures with compared frames", lambda: any(
            m["state"] == "shadowing" and m["figures"]["frames"] >= 3 for m in since(0)), 90)

        n = len(_shadow_msgs(capture, dev.prefix))
        assert dev.agent is not None and dev.agent.terminate() == 0, dev.log()
        dev.wait("the retained 'stopped, resumes' message", lambda: any(
            m["state"] == "stopped" for m in since(n)), 30)
        stopped = next(m for m in since(n) if m["state"] == "stopped")
        assert "resumes when it starts again" in stopped["reason"], stopped
        before = stopped["figures"]["frames"]
        record = json.loads(next((dev.state_dir / "models").glob("*/shadow/shadow.json"))
                            .read_text())
        assert record["sha256"] == full_sha
        assert record["state"]["agreement"]["frames"] == before

        n = len(_shadow_msgs(capture, dev.prefix))
        agent = dev.start()
        dev.wait("the shadow resumed with its totals", lambda: any(
            m["state"] == "shadowing" and m["figures"]["frames"] > before
            for m in since(n)), 90)
        resumed = since(n)
        assert all(m["candidate"]["sha256"] == full_sha for m in resumed)
        assert resumed[0]["state"] == "shadowing" and resumed[0]["figures"]["frames"] >= before
        gate = resumed[0]["gate"]
        assert (gate["frames"], gate["max_latency_ratio"]) == (1000000, 100), gate
        mark = dev.mark()
        promoted = dev.cli("promote", "--device", dev.device_id, "--pipeline", PIPELINE,
                           "--broker", dev.broker_arg, "--key", str(dev.key_path),
                           "--sha256", full_sha, "--timeout", "60")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr + dev.log()
        dev.wait_results(3, since=mark, sha=full_sha)

        # a shadow whose stored candidate changed while the daemon was down: ended, explicitly
        mark = dev.mark()
        m = build_manifest(name="face-short", version=3, sha256=dev.configured_sha,
                           size=short.stat().st_size, key=dev.key, url=short.as_uri(),
                           labels=labels_path(SHORT).read_text())
        rid = uuid.uuid4().hex
        assert dev.sub.publish(f"{dev.prefix}/cmd/model/shadow", json.dumps(
            {"request_id": rid, "pipeline": PIPELINE, "manifest": dict(m.raw)}).encode())
        assert dev.wait_reply(rid, mark, 60)["ok"], dev.log()
        assert agent.terminate() == 0, dev.log()
        stored = next((dev.state_dir / "models").glob(f"*/shadow/{dev.configured_sha}.tflite"))
        data = stored.read_bytes()
        stored.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
        n = len(_shadow_msgs(capture, dev.prefix))
        dev.start()
        dev.wait("the shadow reported ended", lambda: any(
            s["state"] == "stopped" and "not resumed" in (s["reason"] or "")
            for s in since(n)), 60)
        ended = next(s for s in since(n) if s["state"] == "stopped")
        assert ended["reason"] == ("not resumed after the restart: the stored candidate file "
                                   "is missing or was changed"), ended
        assert ended["candidate"]["version"] == 3
        dev.wait_results(3, since=dev.mark(), sha=full_sha)  # the active model serves on
        assert not stored.exists()
    finally:
        dev.close()
        everything.stop()
    for topic, payload, _retained in capture.messages:
        validate_payload(topic, payload)
