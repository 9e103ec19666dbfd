"""End-to-end model updates: ``edge-agent run`` as a subprocess, a real mosquitto, real
models, signed manifests, commands over MQTT (``edge-agent model push``/``rollback`` as
subprocesses, or the command JSON they publish).

* A signed update to another real model with a compatible decoder goes active without a
  restart (same pid); results then carry its sha256 and version; ``seq`` and the frame index
  run on without a gap or a repeat across the swap; the retained model state goes
  downloading, verifying, validating, active. A signed manual rollback goes back.
* Bad updates against the running daemon end ``rejected`` with a reason and a failed reply,
  while results keep coming from the model that was serving.
* A model that passes validation but fails on what the camera sees later is rolled back by
  the watch, which says why.
* ``kill -9`` at random moments during updates: every restart serves a model whose sha256
  matches its file, and results resume with ``seq`` gap-free.

Timings (gap between results at a swap, command to ``active``) are printed with ``-s``; they
are measurements, not assertions.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.conftest import shared_model
from tests.e2e.agentproc import Inbox, subscribe
from tests.e2e.scene_models import write_dark_nan_model
from tests.e2e.update_harness import (
    PIPELINE,
    RestartCheck,
    UpdateDevice,
    assert_gap_free,
    progression,
    swap_gaps,
    write_scene_video,
)
from tests.privacy.payload_checks import validate_payload

pytestmark = pytest.mark.slow

SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"


@pytest.fixture(scope="module")
def face_models() -> dict[str, Path]:
    """The default BlazeFace models (short range 128 px, full range 192 px; both anchors)."""
    return ensure_default_models()


def _labels(model: Path) -> Path:
    return labels_path(model.stem)


def test_signed_update_swaps_live_then_manual_rollback(tmp_path: Path, broker: Mosquitto,
                                                        face_models: dict[str, Path]) -> None:
    """BlazeFace short range -> full range (both ``anchors``) by ``model push`` over a file
    URL, then ``model rollback``; one agent process throughout."""
    short, full = face_models[SHORT], face_models[FULL]
    video = write_scene_video(tmp_path / "scene.avi", 30)
    dev = UpdateDevice(tmp_path, broker, short, decoder="anchors", labels=_labels(short),
                       video=video, fps=30,
                       updates={"watch_inferences": 30, "watch_seconds": 3})
    try:
        agent = dev.start()
        pid = agent.pid
        dev.wait_results(20, sha=dev.configured_sha)

        manifest = tmp_path / "full-v1.json"
        signed = dev.cli("sign", str(full), "--key", str(dev.key_path), "--name", "face-full",
                         "--version", "1", "--labels", str(_labels(full)), "--url",
                         full.as_uri(), "--out", str(manifest))
        assert signed.returncode == 0, signed.stderr
        new_sha = sha256_file(full)
        before_push = dev.mark()
        pushed = dev.cli("push", str(manifest), "--pipeline", PIPELINE, "--device",
                         dev.device_id, "--broker", dev.broker_arg, "--timeout", "60")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr + dev.log()
        assert "active face-full v1" in pushed.stdout, pushed.stdout

        dev.wait_results(30, since=before_push, sha=new_sha)
        states = dev.states(before_push)
        assert progression(states)[:4] == ["downloading", "verifying", "validating",
                                            "active"], states
        active = next(s for s in states if s["state"] == "active")
        assert (active["name"], active["version"], active["sha256"]) == ("face-full", 1, new_sha)
        assert active["active"]["sha256"] == new_sha
        assert active["previous"] is not None
        assert active["previous"]["sha256"] == dev.configured_sha
        # the log names the candidate by its manifest, not by the staged <sha256>.part at v0
        log = agent.log()
        assert not re.search(r"model \S+\.part v\d", log), log[-3000:]
        assert "model face-full v1 (" in log, log[-3000:]
        dev.wait("the retained status naming the new model", lambda: any(
            st["state"] == "online" and st["pipelines"][0]["model"]["sha256"] == new_sha
            for st in dev.statuses(before_push)))
        # the watch passes: a second ``active`` for the same model
        dev.wait_state("active", before_push, sha=new_sha, count=2, timeout=30)
        assert agent.proc.poll() is None and agent.pid == pid

        before_rollback = dev.mark()
        rolled = dev.cli("rollback", "--device", dev.device_id, "--pipeline", PIPELINE,
                         "--broker", dev.broker_arg, "--key", str(dev.key_path),
                         "--timeout", "30")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr + dev.log()
        back = dev.wait_state("rolled_back", before_rollback)
        assert back["sha256"] == new_sha and "manual rollback" in back["reason"]
        assert back["active"]["sha256"] == dev.configured_sha and back["active"]["version"] == 0
        assert back["previous"] is None  # one level of history
        after = dev.wait_results(20, since=before_rollback, sha=dev.configured_sha)
        assert after[-1]["model"]["version"] == 0
        assert agent.proc.poll() is None and agent.pid == pid
    finally:
        dev.close()

    results = dev.results()
    times = dev.result_times()
    assert_gap_free(results)
    swapped = [r for r in results if r["model"]["sha256"] == new_sha]
    assert swapped and {(r["model"]["name"], r["model"]["version"]) for r in swapped} == \
        {("face-full", 1)}
    # a later subscriber sees the retained state: the rollback, naming the configured model
    late = Inbox()
    sub = subscribe(broker.host, broker.port, [f"{dev.prefix}/model/{PIPELINE}/state"], late)
    try:
        assert late.wait_for(lambda m: bool(m), 30)
    finally:
        sub.stop()
    topic, payload, retained = late.messages[0]
    validate_payload(topic, payload)
    assert retained and json.loads(payload)["state"] == "rolled_back"
    for topic, payload, _ in dev.inbox.messages:
        if payload:
            validate_payload(topic, payload)
    gap, median, worst = swap_gaps(times, results, new_sha)
    last_new = max(i for i, r in enumerate(results) if r["model"]["sha256"] == new_sha)
    back_gap, _, _ = swap_gaps(times, results, dev.configured_sha, after=last_new)
    print(f"\nMEASURE swap gap (BlazeFace short->full, 30 fps): at swap {gap:.1f} ms, at "
          f"rollback {back_gap:.1f} ms; elsewhere median {median:.1f} ms, max {worst:.1f} ms")


def test_bad_updates_are_rejected_while_the_old_model_serves(
        tmp_path: Path, broker: Mosquitto, face_models: dict[str, Path]) -> None:
    """Unsigned, a field changed after signing, bytes that do not match the sha256 (pushed
    with ``model push``: exit 1), and a real detector changed to give NaN scores on every
    frame: each ends ``rejected`` with a reason and a failed reply; nothing is staged; the
    configured model serves throughout, without a gap."""
    short, full = face_models[SHORT], face_models[FULL]
    dev = UpdateDevice(tmp_path, broker, short, decoder="anchors", labels=_labels(short),
                       video=write_scene_video(tmp_path / "scene.avi", 30), fps=30)
    tampered = tmp_path / "tampered.tflite"
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    tampered.write_bytes(bytes(data))
    nan_model = write_dark_nan_model(short, tmp_path / "always-nan.tflite", threshold=2.0)
    try:
        agent = dev.start()
        dev.wait_results(10, sha=dev.configured_sha)

        unsigned = dev.manifest(full, 1, url=full.as_uri())
        del unsigned["signature"]
        changed = dev.manifest(full, 1, url=full.as_uri())
        changed["version"] = 7
        cases = [
            ("unsigned", unsigned, None, "unsigned"),
            ("changed after signing", changed, None, "bad signature"),
            ("NaN scores", dev.manifest(nan_model, 2), nan_model, "non-finite"),
        ]
        for what, manifest, inline, reason in cases:
            mark = dev.mark()
            rid = dev.send_update(manifest, data=inline)
            reply = dev.wait_reply(rid, mark)
            assert reply["ok"] is False and reason in reply["error"], (what, reply)
            rejected = dev.wait_state("rejected", mark)
            assert reason in rejected["reason"], (what, rejected)
            assert rejected["active"]["sha256"] == dev.configured_sha
            dev.wait_results(5, since=dev.mark(), sha=dev.configured_sha)
        nan_states = progression(dev.states(mark))
        assert nan_states == ["downloading", "verifying", "validating", "rejected"], nan_states

        # the operator CLI: bytes behind the URL that do not match the signed sha256
        bad = tmp_path / "bad.json"
        mark = dev.mark()
        assert dev.cli("sign", str(full), "--key", str(dev.key_path), "--name", "face-full",
                       "--version", "3", "--url", tampered.as_uri(),
                       "--out", str(bad)).returncode == 0
        pushed = dev.cli("push", str(bad), "--pipeline", PIPELINE, "--device", dev.device_id,
                         "--broker", dev.broker_arg, "--timeout", "60")
        assert pushed.returncode == 1, pushed.stdout + pushed.stderr
        assert "sha256 mismatch" in pushed.stdout, pushed.stdout
        rejected = dev.wait_state("rejected", mark)
        assert "sha256 mismatch" in rejected["reason"] and rejected["version"] == 3
        dev.wait_results(5, since=dev.mark(), sha=dev.configured_sha)
        staging = dev.state_dir / "models" / PIPELINE / "staging"
        assert not any(staging.glob("*")) if staging.exists() else True
        assert agent.proc.poll() is None
    finally:
        dev.close()
    results = dev.results()
    assert {r["model"]["sha256"] for r in results} == {dev.configured_sha}
    assert_gap_free(results)


def test_watch_rolls_back_a_model_that_fails_on_a_later_scene(
        tmp_path: Path, broker: Mosquitto, face_models: dict[str, Path]) -> None:
    """Automatic rollback of a model that passes validation and fails later.

    The model is the real BlazeFace short-range detector with ``0 * sqrt(mean(input))``
    added to its scores (``scene_models.write_dark_nan_model``): finite while the scene is
    bright, NaN when it goes dark (inputs in [-1, 1], so the mean turns negative). The
    validation warm-up runs on the last real frame, which is bright, so the update goes
    ``active``. Then the scene goes dark: the looping video file is replaced (the video
    source reopens it by path at each loop), the new model's outputs turn non-finite, and
    the watch rolls it back with the reason; the configured model serves on.
    """
    short = face_models[SHORT]
    video = write_scene_video(tmp_path / "scene.avi", 8)
    dark = write_scene_video(tmp_path / "dark.avi", 8, brightness=0.15)
    dev = UpdateDevice(tmp_path, broker, short, decoder="anchors", labels=_labels(short),
                       video=video, fps=30,
                       updates={"watch_inferences": 200, "watch_seconds": 30,
                                "max_failure_ratio": 0.2})
    flaky = write_dark_nan_model(short, tmp_path / "flaky.tflite")
    flaky_sha = sha256_file(flaky)
    try:
        agent = dev.start()
        dev.wait_results(10, sha=dev.configured_sha)
        mark = dev.mark()
        rid = dev.send_update(dev.manifest(flaky, 1, name="face-flaky", url=flaky.as_uri()))
        assert dev.wait_reply(rid, mark)["ok"] is True, dev.log()
        dev.wait_results(3, since=mark, sha=flaky_sha)
        os.replace(dark, video)  # night falls
        back = dev.wait_state("rolled_back", mark, timeout=30)
        after = dev.wait_results(10, since=dev.mark(), sha=dev.configured_sha)
        assert agent.proc.poll() is None
    finally:
        dev.close()
    assert progression(dev.states(mark))[-2:] == ["active", "rolled_back"]
    assert back["sha256"] == flaky_sha and back["name"] == "face-flaky"
    assert "non-finite" in back["reason"] and "during the watch" in back["reason"], back
    assert back["active"]["sha256"] == dev.configured_sha
    assert after[-1]["model"]["version"] == 0
    results = dev.results()
    # frames whose outputs were NaN are not results (the pipeline drops and counts them), so
    # frame indices may skip while the flaky model serves; seq never does
    assert_gap_free(results, frames=False)
    idx = [r["frame"]["index"] for r in results]
    assert len(idx) == len(set(idx)), "no frame is published twice"
    shas = [r["model"]["sha256"] for r in results]
    assert shas[-1] == dev.configured_sha
    current = (dev.state_dir / "models" / PIPELINE / "current").read_text()
    assert flaky_sha not in current, current


KILLS = 5


def test_kill_9_during_updates_restarts_on_a_valid_model(
        tmp_path: Path, broker: Mosquitto, face_models: dict[str, Path]) -> None:
    """``kill -9`` of the agent at random moments after an update command (during the
    download, verification, validation, swap, watch, or after it): every restart serves a
    model whose sha256 matches its file (the status, the model state and the results agree
    on it), and results resume. ``seq`` stays gap-free over all runs (the outbox resends
    what the broker had not acknowledged). ``EDGE_AGENT_E2E_SEED`` repeats a run."""
    seed = int(os.environ.get("EDGE_AGENT_E2E_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    short, full = face_models[SHORT], face_models[FULL]
    dev = UpdateDevice(tmp_path, broker, short, decoder="anchors", labels=_labels(short),
                       video=write_scene_video(tmp_path / "scene.avi", 30), fps=30,
                       updates={"watch_inferences": 30, "watch_seconds": 2})
    known = {dev.configured_sha: short}
    versions = []
    for v in range(1, KILLS + 1):
        # distinct bytes per version: the real models with trailing padding (still valid)
        src = full if v % 2 else short
        path = tmp_path / f"v{v}.tflite"
        path.write_bytes(src.read_bytes() + b"\0" * (16 * v))
        known[sha256_file(path)] = path
        versions.append((v, path))
    moments: list[str] = []
    serving = RestartCheck(dev, known, moments)
    pending: tuple[str, str] | None = None
    try:
        # one moment in each phase window (seconds after the command), in random order:
        # receipt and download, verify/validate, swap, the watch, after the watch
        windows = [(0.0, 0.08), (0.08, 0.2), (0.2, 0.4), (0.4, 1.0), (1.0, 2.5)]
        rng.shuffle(windows)
        for (v, path), window in zip(versions, windows, strict=True):
            since, started = dev.mark(), time.time()
            agent = dev.start()
            serving(since, started, pending)
            manifest = dev.manifest(path, v, name=f"face-v{v}",
                                    url=None if v % 2 else path.as_uri())
            mark = dev.mark()
            rid = dev.send_update(manifest, data=path if v % 2 else None)
            pending = (rid, manifest["sha256"])
            delay = rng.uniform(*window)
            time.sleep(delay)
            seen = progression(dev.states(mark))
            agent.kill()
            moments.append(f"v{v} killed {delay:.2f}s after the command, states seen {seen}")
        since, started = dev.mark(), time.time()
        dev.start()
        serving(since, started, pending)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}; {moments}\n{exc}") from None
    finally:
        dev.close()
    print(f"\nKILLS (seed {seed}):\n  " + "\n  ".join(moments))
    by_seq = {r["seq"]: r for r in dev.results()}
    seqs = sorted(by_seq)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), \
        f"seq gaps over the restarts (seed {seed}): {set(range(seqs[0], seqs[-1])) - set(seqs)}"


def test_coco_ssd_quant_to_tf2_float_and_back(tmp_path: Path, broker: Mosquitto) -> None:
    """With ../shared/models: an SSD pipeline on COCO SSD v1 (uint8) refuses a classifier
    (MobileNet) and a sensor model (hello_world), takes TF2 SSD MobileNet v2 (float) by
    ``model push`` over a file URL, then COCO SSD v1 again as version 2, inline over MQTT
    (4.18 MB; the time from command to ``active`` is printed). One process, no gap."""
    coco = shared_model("coco_ssd_mobilenet_v1_1.0_quant.tflite")
    tf2 = shared_model("tf2_ssd_mobilenet_v2_320_coco_float.tflite")
    mobilenet = shared_model("mobilenet_v1_0.25_128_quant.tflite")
    hello = shared_model("sensor/hello_world_int8.tflite")
    labels = shared_model("coco_labels.txt")
    dev = UpdateDevice(tmp_path, broker, coco, decoder="ssd", labels=labels,
                       video=write_scene_video(tmp_path / "scene.avi", 30), fps=15,
                       updates={"watch_inferences": 15, "watch_seconds": 2})
    tf2_sha = sha256_file(tf2)
    try:
        agent = dev.start()
        pid = agent.pid
        dev.wait_results(10, sha=dev.configured_sha)
        for i, wrong in enumerate((mobilenet, hello), start=1):
            mark = dev.mark()
            rid = dev.send_update(dev.manifest(wrong, i, url=wrong.as_uri()))
            reply = dev.wait_reply(rid, mark)
            rejected = dev.wait_state("rejected", mark)
            assert reply["ok"] is False and "validation failed" in reply["error"], reply
            assert rejected["sha256"] == sha256_file(wrong), rejected
            assert "does not fit this model" in rejected["reason"], rejected
            assert rejected["active"]["sha256"] == dev.configured_sha
            dev.wait_results(3, since=dev.mark(), sha=dev.configured_sha)

        manifest = tmp_path / "tf2.json"
        assert dev.cli("sign", str(tf2), "--key", str(dev.key_path), "--name", "tf2-ssd",
                       "--version", "3", "--labels", str(labels), "--url", tf2.as_uri(),
                       "--out", str(manifest)).returncode == 0
        to_tf2 = dev.mark()
        pushed = dev.cli("push", str(manifest), "--pipeline", PIPELINE, "--device",
                         dev.device_id, "--broker", dev.broker_arg, "--timeout", "60")
        assert pushed.returncode == 0, pushed.stdout + pushed.stderr + dev.log()
        dev.wait_state("active", to_tf2, sha=tf2_sha, count=2)  # the watch passed
        dev.wait_results(10, since=to_tf2, sha=tf2_sha)

        to_coco = dev.mark()
        t0 = time.monotonic()
        rid = dev.send_update(dev.manifest(coco, 4, name="coco-ssd", labels=labels), data=coco)
        assert dev.wait_reply(rid, to_coco, timeout=60)["ok"] is True, dev.log()
        took = dev.state_arrival("active", to_coco, dev.configured_sha) - t0
        download = dev.state_arrival("active", to_coco, dev.configured_sha) - \
            dev.state_arrival("downloading", to_coco, dev.configured_sha)
        after = dev.wait_results(10, since=to_coco, sha=dev.configured_sha)
        assert progression(dev.states(to_coco))[:4] == ["downloading", "verifying",
                                                         "validating", "active"]
        assert (after[-1]["model"]["name"], after[-1]["model"]["version"]) == ("coco-ssd", 4)
        assert agent.proc.poll() is None and agent.pid == pid
    finally:
        dev.close()
    results = dev.results()
    times = dev.result_times()
    assert_gap_free(results)
    assert any(r["model"]["sha256"] == tf2_sha for r in results)
    gap_tf2, median, worst = swap_gaps(times, results, tf2_sha)
    last_tf2 = max(i for i, r in enumerate(results) if r["model"]["sha256"] == tf2_sha)
    gap_coco, _, _ = swap_gaps(times, results, dev.configured_sha, after=last_tf2)
    print(f"\nMEASURE COCO SSD inline (4.18 MB): command -> active {1000 * took:.0f} ms "
          f"(downloading -> active {1000 * download:.0f} ms); swap gap (15 fps): to TF2 "
          f"{gap_tf2:.1f} ms, back to COCO {gap_coco:.1f} ms; elsewhere median {median:.1f} "
          f"ms, max {worst:.1f} ms")
