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

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest

from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.updater.signing import generate_key_pair, load_private_key
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.conftest import SHARED_MODELS, shared_model
from tests.e2e.agentproc import Inbox, subscribe
from tests.e2e.scene_models import write_dark_nan_model
from tests.e2e.update_harness import (
    PIPELINE,
    UpdateDevice,
    assert_gap_free,
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


def _progression(states: list[dict]) -> list[str]:
    """The state names in order, repeats (download progress) folded."""
    out: list[str] = []
    for s in states:
        if not out or out[-1] != s["state"]:
            out.append(s["state"])
    return out


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
        assert _progression(states)[:4] == ["downloading", "verifying", "validating",
                                            "active"], states
        active = next(s for s in states if s["state"] == "active")
        assert (active["name"], active["version"], active["sha256"]) == ("face-full", 1, new_sha)
        assert active["active"]["sha256"] == new_sha
        assert active["previous"] is not None
        assert active["previous"]["sha256"] == dev.configured_sha
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
        assert late.wait_for(lambda m: bool(m), 5)
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
