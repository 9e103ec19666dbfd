"""A fleet of real agents (separate ``edge-agent run`` processes) against one real mosquitto:
inventory, ``fleet status --json``, and staged ``fleet rollout`` (to 100% active; a bad model
that passes validation and fails the watch halts the first wave and its device ends on its
previous model; SIGINT in wave 2 then ``--resume`` updates every device exactly once).

One fleet serves the module (starting ten agents is the expensive part); the tests run in
order and each says what state it starts from. The bad model is the default BlazeFace short
range detector with a score output that turns NaN on a dark scene
(``scene_models.write_dark_nan_model``): validation warms up on a bright frame, then the
test darkens every scene and the watch rolls the canary back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.commands.fleet import order
from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.signing import generate_key_pair
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto, mosquitto_binary
from tests.conftest import IN_CI
from tests.e2e.agentproc import REPO, AgentProcess, Inbox, subscribe, write_config
from tests.e2e.scene_models import write_dark_nan_model
from tests.e2e.update_harness import write_scene_video

pytestmark = pytest.mark.slow

N = 10
GROUP = "lobby"
PIPELINE = "door"
SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"


class Fleet:
    """Ten agents, their keys, videos and a subscriber to every model state."""

    def __init__(self, tmp: Path, broker: Mosquitto, n: int = N,
                 operator_broker: Mosquitto | None = None) -> None:
        self.tmp = tmp
        self.broker = broker
        op = operator_broker or broker  # the operator's CLI may sit on another (bridged) one
        self.broker_arg = f"{op.host}:{op.port}"
        models = ensure_default_models()
        self.short, self.full = models[SHORT], models[FULL]
        self.key, pub, _ = generate_key_pair(tmp / "keys")
        self.bright = write_scene_video(tmp / "bright.avi", 8)
        self.dark = write_scene_video(tmp / "dark.avi", 8, brightness=0.15)
        self.devices = [f"cam-{i:02d}" for i in range(n)]
        self.videos: dict[str, Path] = {}
        self.agents: dict[str, AgentProcess] = {}
        self.inbox = Inbox()
        self.sub = subscribe(op.host, op.port,
                             [f"edge-agent/+/model/{PIPELINE}/state", "edge-agent/+/inventory"],
                             self.inbox)
        for d in self.devices:
            video = tmp / f"{d}.avi"
            video.write_bytes(self.bright.read_bytes())
            self.videos[d] = video
            cfg = write_config(tmp / f"{d}.yaml", {
                "device_id": d, "state_dir": str(tmp / d),
                "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5,
                         "groups": [GROUP], "stats_interval_s": 5},
                "metrics": {"prometheus": {"enabled": False}},
                "updates": {"public_keys": [str(pub)], "watch_inferences": 100,
                            "watch_seconds": 4, "max_failure_ratio": 0.2},
                "commands": {"public_keys": [str(pub)]},
                "pipelines": [{"name": PIPELINE,
                               "model": {"path": str(self.short), "decoder": "anchors",
                                         "labels": str(labels_path(SHORT))},
                               "source": {"type": "video", "uri": str(video), "loop": True,
                                          "fps": 5}}],
            })
            self.agents[d] = AgentProcess(cfg)

    def cli(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, "-m", "edge_agent", *args], cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout, env=env)

    def sign(self, model: Path, version: int, name: str, labels: str = SHORT) -> Path:
        out = self.tmp / f"{name}-v{version}.json"
        done = self.cli("model", "sign", str(model), "--key", str(self.key), "--name", name,
                        "--version", str(version), "--labels", str(labels_path(labels)),
                        "--for-group", GROUP, "--for-pipeline", PIPELINE, "--out", str(out))
        assert done.returncode == 0, done.stderr
        return out

    def rollout_args(self, manifest: Path, model: Path, *extra: str) -> list[str]:
        return ["fleet", "rollout", str(manifest), "--group", GROUP, "--pipeline", PIPELINE,
                "--broker", self.broker_arg, "--file", str(model), "--waves", "10,20,50,100%",
                "--max-failures", "10%", "--wave-timeout", "90", *extra]

    def states(self, sha: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.inbox.json(f"/model/{PIPELINE}/state")
                if sha is None or s["sha256"] == sha]

    def status_json(self) -> list[dict[str, Any]]:
        done = self.cli("fleet", "status", "--broker", self.broker_arg, "--json",
                        "--group", GROUP)
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def wait(self, what: str, pred: Any, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(
                    f"{d}: {a.log()[-1500:]}" for d, a in list(self.agents.items())[:2]))
            time.sleep(0.3)

    def close(self) -> None:
        codes = {}
        for d, a in self.agents.items():
            codes[d] = a.terminate() if a.proc.poll() is None else 0
        self.sub.stop()
        assert all(c == 0 for c in codes.values()), codes


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("fleet")
    broker = Mosquitto(tmp / "broker")
    broker.start()
    f = Fleet(tmp, broker)
    try:
        f.wait("every agent's inventory", lambda: {
            i["device"] for i in f.inbox.json("/inventory")} == set(f.devices), timeout=180)
        yield f
    finally:
        try:
            f.close()
        finally:
            broker.stop()


def test_inventory_and_fleet_status_list_every_device(fleet: Fleet) -> None:
    inv = {i["device"]: i for i in fleet.inbox.json("/inventory")}
    one = inv["cam-00"]
    assert one["schema"] == "edge-agent/inventory@1"
    assert one["groups"] == [GROUP] and len(one["trusted_keys"]) == 1
    assert one["runtime"]["backend"] and one["board"]["memory_mb"] > 0
    assert one["pipelines"][0]["model"]["sha256"] == sha256_file(fleet.short)
    rows = fleet.status_json()
    assert [r["device"] for r in rows] == fleet.devices
    for r in rows:
        assert r["online"] is True and r["groups"] == [GROUP]
        assert r["pipelines"][PIPELINE]["model"]["sha256"] == sha256_file(fleet.short)
        assert r["pipelines"][PIPELINE]["model"]["version"] == 0
    table = fleet.cli("fleet", "status", "--broker", fleet.broker_arg, "--once")
    assert f"{N}/{N} online" in table.stdout, table.stdout + table.stderr


def test_rollout_reaches_every_device(fleet: Fleet) -> None:
    manifest = fleet.sign(fleet.full, 1, "face-full", FULL)
    report = fleet.tmp / "report-v1.json"
    done = fleet.cli(*fleet.rollout_args(manifest, fleet.full, "--report", str(report),
                                         "--progress", str(fleet.tmp / "v1.progress")))
    assert done.returncode == 0, done.stdout + done.stderr
    rep = json.loads(report.read_text())
    assert rep["complete"] is True and rep["outcomes"] == {"active": N}
    # waves follow the deterministic order, canary first
    assert [d for w in rep["waves"] for d in w] == order(fleet.devices)
    assert [len(w) for w in rep["waves"]] == [1, 1, 3, 5]
    sha = sha256_file(fleet.full)
    rows = fleet.status_json()
    assert all(r["pipelines"][PIPELINE]["model"] == {"name": "face-full", "version": 1,
                                                     "sha256": sha} for r in rows), rows
    # each device went active twice (swap, passed watch) for this model
    for d in fleet.devices:
        actives = [s for s in fleet.states(sha) if s["device"] == d and s["state"] == "active"]
        assert len(actives) >= 2, (d, actives)


def test_bad_model_halts_in_the_first_wave_and_the_canary_is_back(fleet: Fleet) -> None:
    flaky = write_dark_nan_model(fleet.short, fleet.tmp / "flaky.tflite")
    flaky_sha, full_sha = sha256_file(flaky), sha256_file(fleet.full)
    manifest = fleet.sign(flaky, 2, "face-flaky")
    report = fleet.tmp / "report-bad.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent",
         *fleet.rollout_args(manifest, flaky, "--report", str(report), "--progress",
                             str(fleet.tmp / "bad.progress"), "--rollback-on-halt", "--key",
                             str(fleet.key))],
        cwd=fleet.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        canary = order(fleet.devices)[0]
        fleet.wait("the canary's active bad model", lambda: any(
            s["device"] == canary and s["state"] == "active" for s in fleet.states(flaky_sha)))
        for video in fleet.videos.values():  # night falls everywhere
            tmp = video.with_suffix(".new")
            tmp.write_bytes(fleet.dark.read_bytes())
            os.replace(tmp, video)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for video in fleet.videos.values():
            tmp = video.with_suffix(".new")
            tmp.write_bytes(fleet.bright.read_bytes())
            os.replace(tmp, video)
    assert proc.returncode == 1, out
    assert "HALTED" in out, out
    rep = json.loads(report.read_text())
    assert rep["halted"]["wave"] == 1, rep
    touched = [d for d, e in rep["devices"].items() if e["sent"] is not None]
    assert touched == [canary], rep
    assert rep["devices"][canary]["outcome"] == "failed"
    assert "during the watch" in rep["devices"][canary]["reason"], rep
    fleet.wait("the canary back on its previous model", lambda: any(
        r["device"] == canary and r["pipelines"][PIPELINE]["model"]["sha256"] == full_sha
        for r in fleet.status_json()), timeout=30)
    assert not [s for s in fleet.states(flaky_sha) if s["device"] != canary]


def test_rollout_interrupted_in_wave_two_resumes_and_updates_each_device_once(
        fleet: Fleet) -> None:
    # the short-range model again, as version 3 (the floor is 1 after the first test)
    manifest = fleet.sign(fleet.short, 3, "face-short")
    sha = sha256_file(fleet.short)
    progress = fleet.tmp / "v3.progress"
    report = fleet.tmp / "report-v3.json"
    args = fleet.rollout_args(manifest, fleet.short, "--progress", str(progress),
                              "--report", str(report))
    # SIGINT's default action in the child: a background job inherits it ignored
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", *args], cwd=fleet.tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    second = order(fleet.devices)[1]
    try:
        fleet.wait("wave 2 under way", lambda: progress.is_file() and json.loads(
            progress.read_text())["devices"][second]["sent"] is not None)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out
    assert "--resume" in out, out
    done = fleet.cli(*args, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rep = json.loads(report.read_text())
    assert rep["outcomes"] == {"active": N}, rep
    for d in fleet.devices:  # exactly one update each: one download of this model
        verifying = [s for s in fleet.states(sha) if s["device"] == d and
                     s["state"] == "verifying"]
        assert len(verifying) == 1, (d, verifying)
    rows = fleet.status_json()
    assert {r["pipelines"][PIPELINE]["model"]["version"] for r in rows} == {3}


def test_offline_device_is_pending_then_updated_when_back_with_include_offline(
        fleet: Fleet) -> None:
    away = fleet.devices[-2]
    assert fleet.agents[away].terminate() == 0
    fleet.wait("the stopped agent offline", lambda: not next(
        r for r in fleet.status_json() if r["device"] == away)["online"], timeout=30)
    # a model of its own sha256 (never NaN: inputs stay above -2), so later tests' models
    # are not already active anywhere
    steady = write_dark_nan_model(fleet.short, fleet.tmp / "steady.tflite", threshold=-2.0)
    manifest = fleet.sign(steady, 4, "face-steady")
    progress = fleet.tmp / "v4.progress"
    report = fleet.tmp / "report-v4.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent",
         *fleet.rollout_args(manifest, steady, "--waves", "100%", "--include-offline",
                             "--progress", str(progress), "--report", str(report))],
        cwd=fleet.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        fleet.wait("the offline device pending", lambda: progress.is_file() and json.loads(
            progress.read_text())["devices"][away]["outcome"] == "pending")
        assert json.loads(progress.read_text())["devices"][away]["sent"] is None
        fleet.agents[away] = AgentProcess(fleet.tmp / f"{away}.yaml")  # it comes back
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    rep = json.loads(report.read_text())
    assert rep["outcomes"] == {"active": N}, rep
    assert {r["pipelines"][PIPELINE]["model"]["version"] for r in fleet.status_json()} == {4}


def test_killed_agent_shows_offline_within_its_keepalive(fleet: Fleet) -> None:
    victim = fleet.devices[-1]
    fleet.agents[victim].kill()
    t0 = time.monotonic()
    fleet.wait("the last will", lambda: not next(
        r for r in fleet.status_json() if r["device"] == victim)["online"], timeout=20)
    elapsed = time.monotonic() - t0
    print(f"offline shown {elapsed:.1f} s after SIGKILL (keepalive 5 s)")
    rows = fleet.status_json()
    assert sum(r["online"] for r in rows) == N - 1


def test_rollout_through_a_mosquitto_bridge(tmp_path: Path) -> None:
    """Agents on an edge broker bridged to a central one; the operator only talks to the
    central broker: inventory and states flow up, commands flow down, and a two-wave rollout
    to three agents completes."""
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed")
        pytest.skip("mosquitto is not installed")
    central = Mosquitto(tmp_path / "central")
    central.start()
    edge = Mosquitto(tmp_path / "edge", extra_config="\n".join([
        "connection central", f"address {central.host}:{central.port}",
        "bridge_protocol_version mqttv311", "cleansession false", "try_private true",
        "topic edge-agent/+/status out 1", "topic edge-agent/+/inventory out 1",
        "topic edge-agent/+/stats out 0", "topic edge-agent/+/model/+/state out 1",
        "topic edge-agent/+/cmd/reply out 1", "topic edge-agent/+/results/+ out 1",
        "topic edge-agent/+/events/+ out 1",
        "topic edge-agent/+/cmd/rollback in 1", "topic edge-agent/+/cmd/model/update in 1",
        "topic edge-agent/group/+/cmd/# in 1"]))
    edge.start()
    f: Fleet | None = None
    try:
        (tmp_path / "fleet").mkdir()
        f = Fleet(tmp_path / "fleet", edge, n=3, operator_broker=central)
        fl = f
        f.wait("every agent's inventory at the central broker", lambda: {
            i["device"] for i in fl.inbox.json("/inventory")} == set(fl.devices), timeout=180)
        manifest = f.sign(f.full, 1, "face-full", FULL)
        report = f.tmp / "report.json"
        done = f.cli("fleet", "rollout", str(manifest), "--group", GROUP, "--pipeline",
                     PIPELINE, "--broker", f.broker_arg, "--file", str(f.full), "--waves",
                     "34,100%", "--wave-timeout", "90", "--report", str(report))
        assert done.returncode == 0, done.stdout + done.stderr
        rep = json.loads(report.read_text())
        assert rep["outcomes"] == {"active": 3} and [len(w) for w in rep["waves"]] == [2, 1]
        sha = sha256_file(f.full)
        assert all(r["pipelines"][PIPELINE]["model"]["sha256"] == sha
                   for r in f.status_json()), f.status_json()
    finally:
        try:
            if f is not None:
                f.close()
        finally:
            edge.stop()
            central.stop()


def test_shadow_rollout_halts_when_the_canary_rejects_by_its_gate(fleet: Fleet) -> None:
    """``fleet rollout --shadow``: the canary runs the candidate in shadow, its gate (an
    impossible latency ratio) rejects it with the figures; the rollout halts in wave 1 and no
    device serves the candidate."""
    before = {r["device"]: r["pipelines"][PIPELINE]["model"]["sha256"]
              for r in fleet.status_json()}
    manifest = fleet.tmp / "face-full-v60.json"
    done = fleet.cli("model", "sign", str(fleet.full), "--key", str(fleet.key), "--name",
                     "face-full", "--version", "60", "--labels", str(labels_path(FULL)),
                     "--for-group", GROUP, "--for-pipeline", PIPELINE, "--shadow-frames", "3",
                     "--shadow-max-latency-ratio", "0.001", "--out", str(manifest))
    assert done.returncode == 0, done.stderr
    report = fleet.tmp / "report-shadow.json"
    done = fleet.cli(*fleet.rollout_args(manifest, fleet.full, "--report", str(report),
                                         "--progress", str(fleet.tmp / "shadow.progress"),
                                         "--shadow", "--shadow-every", "1"))
    assert done.returncode == 1, done.stdout + done.stderr
    rep = json.loads(report.read_text())
    assert rep["halted"]["wave"] == 1, rep
    canary = order(fleet.devices)[0]
    touched = [d for d, e in rep["devices"].items() if e["sent"] is not None]
    assert touched == [canary], rep
    assert rep["devices"][canary]["outcome"] == "failed"
    assert "shadow gate failed: latency ratio" in rep["devices"][canary]["reason"], rep
    after = {r["device"]: r["pipelines"][PIPELINE]["model"]["sha256"]
             for r in fleet.status_json()}
    assert after == before  # nothing was swapped anywhere
