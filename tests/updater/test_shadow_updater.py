"""The updater's side of shadow evaluation, with the agent double: a shadow candidate goes
through the update's checks, is kept apart, and only a promote (or its gate) swaps it in."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent.updater.updater import ModelUpdater
from tests.conftest import shared_model
from tests.updater.conftest import Keys, Rig, make_rig

NEW = "face_detection_full_range_sparse.tflite"


class ShadowDouble:
    """Records the shadow hook's calls; ``verdict`` plays the runner's gate decision."""

    def __init__(self) -> None:
        self.started: list[tuple[Path, Any, dict[str, Any]]] = []
        self.stopped: list[tuple[str, str | None]] = []
        self.changed = threading.Event()

    def shadow(self, path: Path, labels: Path | None, manifest: Any, **kw: Any) -> None:
        assert path.exists()
        self.started.append((path, manifest, kw))
        self.changed.set()

    def stop(self, state: str, reason: str | None) -> None:
        self.stopped.append((state, reason))
        self.changed.set()


@pytest.fixture
def srig(tmp_path: Path, keys: Keys) -> Any:
    rig = make_rig(tmp_path, keys)
    rig.updater.stop()
    double = ShadowDouble()
    hooks = dataclasses.replace(rig.agent.hooks(), shadow=double.shadow,
                                stop_shadow=double.stop)
    rig.updater = ModelUpdater("door", rig.updater.config, rig.store, keys.public, hooks)
    rig.updater.start(rig.store.last_resolved)
    try:
        yield rig, double
    finally:
        rig.updater.stop()


def _shadow(rig: Rig, manifest: dict[str, Any], rid: str, **extra: Any) -> tuple[bool, str]:
    assert rig.updater.handle_shadow({"request_id": rid, "pipeline": "door",
                                      "manifest": manifest, **extra})
    _, ok, error = rig.agent.wait_reply(rid)
    return ok, error or ""


def test_shadow_is_kept_apart_and_promote_swaps_it_in(srig: Any, keys: Keys) -> None:
    rig, double = srig
    model = shared_model(NEW)
    m = keys.manifest(model, version=4, url=model.resolve().as_uri())
    ok, error = _shadow(rig, dict(m.raw), "s1", every=3, when_idle=True)
    assert ok, error
    path, manifest, kw = double.started[-1]
    assert path.parent.name == "shadow" and manifest.sha256 == m.sha256
    assert kw["every"] == 3 and kw["when_idle"] is True and kw["gate"] is None
    assert rig.agent.swaps == [] and rig.agent.active_model[1] == 0  # nothing serves it yet
    assert rig.updater.shadow_candidate() == m.describe()
    assert rig.updater.floor.version == 0  # the floor rises only when it is promoted

    assert rig.updater.promote("p1", "0" * 64)
    assert rig.agent.wait_reply("p1")[1:] == (False, "promote refused: the candidate in "
                                              f"shadow is {m.sha256[:12]}, not 000000000000")
    assert rig.updater.promote("p2", m.sha256)
    _, ok, error = rig.agent.wait_reply("p2")
    assert ok, error
    assert rig.agent.active_model == ("detector", 4, m.sha256)
    assert rig.agent.swaps[-1][0] == rig.store.model_path(m.sha256)
    assert double.stopped[-1][0] == "promoted"
    assert rig.updater.floor.version == 4 and rig.updater.shadow_candidate() is None


def test_shadow_refused_like_an_update(srig: Any, keys: Keys) -> None:
    rig, double = srig
    model = shared_model(NEW)
    m = dict(keys.manifest(model, version=2, url=model.resolve().as_uri()).raw)
    m["version"] = 9  # the signature no longer covers it
    ok, error = _shadow(rig, m, "s1")
    assert not ok and error.startswith("shadow: ") and "signature" in error, error
    bad_gate = keys.manifest(model, version=2, url=model.resolve().as_uri(),
                             extra={"shadow": {"frames": 0}})
    ok, error = _shadow(rig, dict(bad_gate.raw), "s2")
    assert not ok and "manifest shadow.frames: must be an integer" in error, error
    assert double.started == [] and rig.agent.swaps == []
    assert rig.updater.promote("p1")
    assert rig.agent.wait_reply("p1")[1:] == (False, "promote refused: no candidate in shadow")


def test_gate_verdicts_promote_or_reject(srig: Any, keys: Keys) -> None:
    rig, double = srig
    model = shared_model(NEW)
    gate = {"frames": 10, "min_recall": 0.9}
    m = keys.manifest(model, version=5, url=model.resolve().as_uri(), extra={"shadow": gate})
    ok, error = _shadow(rig, dict(m.raw), "s1")
    assert ok, error
    kw = double.started[-1][2]
    assert kw["gate"].frames == 10 and kw["gate"].min_recall == 0.9
    kw["on_verdict"]("fail", "shadow gate failed: recall 0.4 < 0.9")
    rejected = rig.agent.wait_state("rejected")
    assert rejected["sha256"] == m.sha256 and "recall 0.4" in rejected["reason"]
    assert double.stopped[-1] == ("rejected", "shadow gate failed: recall 0.4 < 0.9")
    assert rig.agent.swaps == []

    m6 = keys.manifest(model, version=6, url=model.resolve().as_uri(), extra={"shadow": gate})
    ok, error = _shadow(rig, dict(m6.raw), "s2")
    assert ok, error
    double.started[-1][2]["on_verdict"]("pass", None)
    rig.agent.wait_reply(f"shadow-gate-{m6.sha256[:12]}")
    assert rig.agent.active_model == ("detector", 6, m6.sha256)
    assert double.stopped[-1][0] == "promoted"


def test_an_update_while_shadowing_stops_the_shadow(srig: Any, keys: Keys) -> None:
    rig, double = srig
    model = shared_model(NEW)
    m = keys.manifest(model, version=2, url=model.resolve().as_uri())
    ok, error = _shadow(rig, dict(m.raw), "s1")
    assert ok, error
    pose = shared_model("pose_detection.tflite")
    other = keys.manifest(pose, version=3, url=pose.resolve().as_uri())
    assert rig.updater.handle_update({"request_id": "u1", "pipeline": "door",
                                      "manifest": dict(other.raw)})
    _, ok, error = rig.agent.wait_reply("u1")
    assert ok, error
    assert double.stopped == [("stopped", "the active model changed")]
    assert rig.updater.shadow_candidate() is None


def test_a_manifest_with_files_for_this_devices_targets_is_not_shadowed(
        tmp_path: Path, keys: Keys) -> None:
    from edge_agent.updater.manifest import TargetFile

    rig = make_rig(tmp_path, keys)
    rig.updater.stop()
    double = ShadowDouble()
    hooks = dataclasses.replace(rig.agent.hooks(), shadow=double.shadow,
                                stop_shadow=double.stop, targets=lambda: ["npu", "cpu"])
    rig.updater = ModelUpdater("door", rig.updater.config, rig.store, keys.public, hooks)
    rig.updater.start(rig.store.last_resolved)
    try:
        model = shared_model(NEW)
        m = keys.manifest(model, version=2, url=model.resolve().as_uri(),
                          targets={"npu": TargetFile("a" * 64, 10, "http://127.0.0.1:9/x")})
        ok, error = _shadow(rig, dict(m.raw), "s1")
        assert not ok and "files for this device's targets (npu)" in error, error
        assert double.started == []
    finally:
        rig.updater.stop()


def _restart(rig: Rig, keys: Keys, double: ShadowDouble, reports: list[tuple]) -> None:
    """Stop the updater as the agent does at exit, then start a new one on the same store."""
    rig.updater.stop()
    hooks = dataclasses.replace(rig.agent.hooks(), shadow=double.shadow,
                                stop_shadow=double.stop,
                                report_shadow=lambda *a, **kw: reports.append((*a, kw)))
    rig.updater = ModelUpdater("door", rig.updater.config, rig.store, keys.public, hooks)
    double.changed.clear()
    rig.updater.start(rig.store.last_resolved)


def test_a_shadow_resumes_after_a_restart_with_its_totals(srig: Any, keys: Keys) -> None:
    rig, double = srig
    model = shared_model(NEW)
    m = keys.manifest(model, version=4, url=model.resolve().as_uri(),
                      extra={"shadow": {"frames": 50}})
    ok, error = _shadow(rig, dict(m.raw), "s1", every=3, when_idle=True)
    assert ok, error
    kw = double.started[-1][2]
    assert kw["resume"] is None
    saved = {"agreement": {"frames": 7}, "counters": {"offered": 21}}
    kw["checkpoint"](saved)  # what the runner saves while it runs and at stop
    reports: list[tuple] = []
    _restart(rig, keys, double, reports)
    assert double.stopped[-1] == ("stopped", "the agent stopped; the shadow resumes when it "
                                  "starts again")
    assert double.changed.wait(30), "the shadow did not resume"
    path, manifest, kw = double.started[-1]
    assert len(double.started) == 2 and manifest.sha256 == m.sha256 and path.exists()
    assert kw["every"] == 3 and kw["when_idle"] is True and kw["gate"].frames == 50
    assert kw["resume"] == saved and reports == []
    assert rig.updater.shadow_candidate() == m.describe()
    # it can still be promoted after the restart
    assert rig.updater.promote("p1", m.sha256)
    _, ok, error = rig.agent.wait_reply("p1")
    assert ok, error
    assert rig.agent.active_model == ("detector", 4, m.sha256)
    assert not (path.parent / "shadow.json").exists()


def test_a_shadow_that_cannot_resume_is_reported_ended(srig: Any, keys: Keys) -> None:
    rig, double = srig
    model = shared_model(NEW)
    m = keys.manifest(model, version=4, url=model.resolve().as_uri())
    ok, error = _shadow(rig, dict(m.raw), "s1")
    assert ok, error
    path = double.started[-1][0]
    double.started[-1][2]["checkpoint"]({"agreement": {"frames": 3}})
    rig.updater.stop()
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # the stored candidate changed
    reports: list[tuple] = []
    _restart(rig, keys, double, reports)
    deadline = time.monotonic() + 30
    while not reports:
        assert time.monotonic() < deadline, "no report of the ended shadow"
        time.sleep(0.02)
    manifest, state, reason, saved, kw = reports[0]
    assert manifest.sha256 == m.sha256 and state == "stopped"
    assert reason == ("not resumed after the restart: the stored candidate file is missing "
                      "or was changed"), reason
    assert saved == {"agreement": {"frames": 3}} and kw == {"every": 5, "when_idle": False}
    assert len(double.started) == 1 and rig.updater.shadow_candidate() is None
    assert not path.exists() and not (path.parent / "shadow.json").exists()
