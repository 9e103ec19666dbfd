"""A device under test for model updates: keys, config, a real ``edge-agent run`` child, a
subscriber that timestamps what arrives, and ways to send update commands over MQTT.

Commands go out either through the operator CLI as a subprocess (:meth:`UpdateDevice.cli`)
or as the command JSON the CLI would publish (:meth:`UpdateDevice.send_update`), so a test can
time or interrupt them precisely.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.signing import generate_key_pair, load_private_key
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.e2e.agentproc import REPO, AgentProcess, Inbox, subscribe, write_config

PIPELINE = "door"


def write_scene_video(path: Path, frames: int, *, brightness: float = 1.0) -> Path:
    """An MJPG video (320x240) of a bright textured scene with a moving face-sized ellipse;
    ``brightness`` < 1 darkens every pixel (the same scene at night)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    rng = np.random.default_rng(1)
    bg = rng.integers(170, 230, (240, 320, 3), dtype=np.uint8)
    for i in range(frames):
        img = bg.copy()
        cv2.ellipse(img, (60 + (i * 7) % 200, 120), (30, 40), 0, 0, 360, (180, 200, 230), -1)
        w.write(np.clip(img * brightness, 0, 255).astype(np.uint8))
    w.release()
    return path


class TimedInbox(Inbox):
    """An :class:`Inbox` that also records when each message arrived (monotonic seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        with self.cond:
            self.messages.append((topic, payload, retained))
            self.times.append(time.monotonic())
            self.cond.notify_all()


class UpdateDevice:
    """One agent with a ``door`` pipeline, its keys and a subscriber to what it publishes.

    Args:
        tmp: a private folder (config, state, keys, videos).
        broker: the test's mosquitto.
        model: the configured model of the pipeline.
        decoder: the pipeline's decoder.
        labels: the configured labels file.
        video: the source video (looped).
        fps: source pacing (0: as fast as the pipeline takes frames).
        updates: overrides of the ``updates`` config section.
    """

    def __init__(self, tmp: Path, broker: Mosquitto, model: Path, *, decoder: str,
                 labels: Path | None, video: Path, fps: float = 30,
                 updates: dict[str, Any] | None = None, device_id: str = "upd-1") -> None:
        self.tmp = tmp
        self.broker = broker
        self.device_id = device_id
        self.prefix = f"edge-agent/{device_id}"
        self.state_dir = tmp / "state"
        priv, pub, self.key_id = generate_key_pair(tmp / "keys")
        self.key_path, self.pub_path = priv, pub
        self.key = load_private_key(priv)
        self.configured_sha = sha256_file(model)
        model_cfg: dict[str, Any] = {"path": str(model), "decoder": decoder}
        if labels is not None:
            model_cfg["labels"] = str(labels)
        self.config_path = write_config(tmp / "config.yaml", {
            "device_id": device_id,
            "state_dir": str(self.state_dir),
            "mqtt": {"host": broker.host, "port": broker.port},
            "metrics": {"prometheus": {"enabled": False}},
            "updates": {"public_keys": [str(pub)], **(updates or {})},
            "pipelines": [{"name": PIPELINE, "model": model_cfg,
                           "source": {"type": "video", "uri": str(video), "loop": True,
                                      "fps": fps}}],
        })
        self.inbox = TimedInbox()
        p = self.prefix
        self.sub = subscribe(broker.host, broker.port,
                             [f"{p}/results/{PIPELINE}", f"{p}/model/{PIPELINE}/state",
                              f"{p}/status", f"{p}/cmd/reply"], self.inbox)
        self.agent: AgentProcess | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AgentProcess:
        """Start ``edge-agent run`` (a new child; the previous one must be gone)."""
        self.agent = AgentProcess(self.config_path)
        return self.agent

    def close(self) -> None:
        """Stop the agent (SIGTERM) and the subscriber; fail when the agent exits non-zero."""
        code = 0
        try:
            if self.agent is not None and self.agent.proc.poll() is None:
                code = self.agent.terminate()
        finally:
            self.sub.stop()
        assert code == 0, self.log()

    def log(self) -> str:
        """The agent's output (for assertion messages)."""
        if self.agent is None:
            return ""
        try:
            return self.agent.log()[-6000:]
        except ValueError:  # log file already closed
            return self.agent.log_path.read_text(errors="replace")[-6000:]

    # ------------------------------------------------------------------ what arrived

    def mark(self) -> int:
        """A position in the inbox; ``since=mark()`` looks only at later messages."""
        with self.inbox.lock:
            return len(self.inbox.messages)

    def _decoded(self, suffix: str, since: int, live_only: bool = False
                 ) -> list[tuple[int, dict[str, Any]]]:
        with self.inbox.lock:
            items = list(enumerate(self.inbox.messages))[since:]
        return [(i, json.loads(p)) for i, (t, p, r) in items
                if t.endswith(suffix) and p and not (live_only and r)]

    def results(self, since: int = 0) -> list[dict[str, Any]]:
        """Results of the pipeline, in arrival order."""
        return [m for _, m in self._decoded(f"/results/{PIPELINE}", since)]

    def result_times(self, since: int = 0) -> list[float]:
        """Arrival times of :meth:`results` (monotonic seconds)."""
        idx = [i for i, _ in self._decoded(f"/results/{PIPELINE}", since)]
        return [self.inbox.times[i] for i in idx]

    def states(self, since: int = 0) -> list[dict[str, Any]]:
        """Model state messages published live (not the retained copy from before)."""
        return [m for _, m in self._decoded(f"/model/{PIPELINE}/state", since, live_only=True)]

    def statuses(self, since: int = 0) -> list[dict[str, Any]]:
        """Status messages."""
        return [m for _, m in self._decoded("/status", since)]

    def wait(self, what: str, pred: Any, timeout: float = 30.0) -> None:
        """Wait until ``pred()`` holds; fail with the agent's log otherwise."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.log()}")
            if self.agent is not None and self.agent.proc.poll() is not None:
                raise AssertionError(f"agent exited ({self.agent.proc.returncode}) while "
                                     f"waiting for {what}\n{self.log()}")
            with self.inbox.cond:
                self.inbox.cond.wait(0.1)

    def wait_results(self, n: int, since: int = 0, sha: str | None = None,
                     timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait for ``n`` results after ``since`` (made by model ``sha`` when given)."""
        def got() -> list[dict[str, Any]]:
            return [r for r in self.results(since) if sha is None or r["model"]["sha256"] == sha]
        self.wait(f"{n} results" + (f" of model {sha[:12]}" if sha else ""),
                  lambda: len(got()) >= n, timeout)
        return got()

    def wait_state(self, state: str, since: int, sha: str | None = None,
                   timeout: float = 30.0, count: int = 1) -> dict[str, Any]:
        """Wait for the ``count``-th live state message ``state`` (about model ``sha``)."""
        def found() -> list[dict[str, Any]]:
            return [s for s in self.states(since)
                    if s["state"] == state and (sha is None or s["sha256"] == sha)]
        self.wait(f"model state {state}", lambda: len(found()) >= count, timeout)
        return found()[count - 1]

    def state_arrival(self, state: str, since: int, sha: str) -> float:
        """When the first live state message ``state`` about ``sha`` arrived (monotonic)."""
        for i, m in self._decoded(f"/model/{PIPELINE}/state", since, live_only=True):
            if m["state"] == state and m["sha256"] == sha:
                return self.inbox.times[i]
        raise AssertionError(f"no state {state} about {sha[:12]}")

    def reply(self, request_id: str, since: int = 0) -> dict[str, Any] | None:
        """The device's reply to ``request_id``, if it arrived."""
        for _, m in self._decoded("/cmd/reply", since):
            if m.get("request_id") == request_id:
                return m
        return None

    def wait_reply(self, request_id: str, since: int = 0, timeout: float = 30.0
                   ) -> dict[str, Any]:
        """Wait for the reply to ``request_id``."""
        self.wait(f"reply to {request_id}", lambda: self.reply(request_id, since) is not None,
                  timeout)
        reply = self.reply(request_id, since)
        assert reply is not None
        return reply

    # ------------------------------------------------------------------ commands

    def manifest(self, model: Path, version: int, *, name: str | None = None,
                 url: str | None = None, labels: Path | None = None, key: Any = None,
                 sha256: str | None = None) -> dict[str, Any]:
        """A signed manifest (the updater's Python API, as ``model sign`` does)."""
        m = build_manifest(name=name or model.stem.replace("_", "-"), version=version,
                           sha256=sha256 or sha256_file(model), size=model.stat().st_size,
                           key=key or self.key, url=url,
                           labels=labels.read_text() if labels is not None else None)
        return dict(m.raw)

    def send_update(self, manifest: dict[str, Any], *, data: Path | None = None,
                    url: str | None = None) -> str:
        """Publish ``P/D/cmd/model/update`` like ``model push``; return its request_id."""
        rid = uuid.uuid4().hex
        command: dict[str, Any] = {"request_id": rid, "pipeline": PIPELINE,
                                   "manifest": manifest}
        if data is not None:
            command["data"] = base64.b64encode(data.read_bytes()).decode()
        if url is not None:
            command["url"] = url
        assert self.sub.publish(f"{self.prefix}/cmd/model/update",
                                json.dumps(command).encode()), "publish failed"
        return rid

    def cli(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        """``python -m edge_agent model ARGS`` as a subprocess (the operator's CLI)."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return subprocess.run([sys.executable, "-m", "edge_agent", "model", *args],
                              cwd=str(REPO), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    @property
    def broker_arg(self) -> str:
        """``HOST:PORT`` for the CLI's ``--broker``."""
        return f"{self.broker.host}:{self.broker.port}"


def assert_gap_free(results: list[dict[str, Any]], frames: bool = True) -> None:
    """``seq`` rises by one per result and (``frames``) every frame index from the first to
    the last arrived exactly once (one agent run, one pipeline)."""
    seqs = [r["seq"] for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), \
        f"seq not contiguous: gaps {[(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]}"
    if not frames:
        return
    idx = sorted(r["frame"]["index"] for r in results)
    holes = [(a, b) for a, b in itertools.pairwise(idx) if b != a + 1]
    assert idx == list(range(idx[0], idx[0] + len(idx))), \
        f"frame indices missing or repeated: {holes}"


def swap_gaps(times: list[float], results: list[dict[str, Any]], sha: str, after: int = 0
              ) -> tuple[float, float, float]:
    """(gap at the swap to ``sha``, median gap elsewhere, max gap elsewhere), in ms.

    The swap is the first result of ``sha`` at or after position ``after``; the gap at the
    swap is the longest arrival gap among the results from three before to two after it.
    """
    first = next(i for i, r in enumerate(results) if i >= after and r["model"]["sha256"] == sha)
    gaps = [b - a for a, b in itertools.pairwise(times)]  # gaps[i]: results i -> i+1
    near = set(range(max(0, first - 3), min(len(gaps), first + 2)))
    at_swap = max(gaps[i] for i in near)
    rest = [g for i, g in enumerate(gaps) if i not in near]
    return 1000 * at_swap, 1000 * statistics.median(rest), 1000 * max(rest)


def epoch(ts: str) -> float:
    """Epoch seconds of a payload's ``ts`` (ISO 8601, UTC, ``Z``)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def progression(states: list[dict[str, Any]]) -> list[str]:
    """The state names in order, repeats (download progress) folded."""
    out: list[str] = []
    for s in states:
        if not out or out[-1] != s["state"]:
            out.append(s["state"])
    return out


class RestartCheck:
    """Checks one restart of a killed agent: the model it serves is valid, results resume.

    Args:
        dev: the device.
        known: every model that may serve, by sha256 (the configured one and the updates).
        notes: a line per kill, extended here with what the restart did.
    """

    def __init__(self, dev: UpdateDevice, known: dict[str, Path], notes: list[str]) -> None:
        self.dev = dev
        self.known = known
        self.notes = notes
        self.boots: set[str] = set()

    def check_file(self, sha: str) -> None:
        """``sha`` is a known model and the file the agent loads for it matches it."""
        assert sha in self.known, (sha, self.notes)
        stored = self.known[sha] if sha == self.dev.configured_sha else \
            self.dev.state_dir / "models" / PIPELINE / f"{sha}.tflite"
        assert sha256_file(stored) == sha, (stored, self.notes)

    def __call__(self, since: int, started: float, pending: tuple[str, str] | None) -> None:
        """Wait for the new boot's status, model state and results, and check them.

        Args:
            since: inbox mark taken before the start.
            started: wall-clock time of the start.
            pending: ``(request_id, sha256)`` of the update sent before the kill. When the
                killed agent had not taken it yet, the broker delivers it again (QoS 1,
                persistent session) and the new agent applies it: wait until it is over.
        """
        dev = self.dev

        def status() -> dict[str, Any] | None:
            fresh = [s for s in dev.statuses(since)
                     if s["state"] == "online" and s.get("boot_id") not in self.boots]
            return fresh[-1] if fresh else None
        dev.wait("online status of the new boot", lambda: status() is not None)
        st = status()
        assert st is not None
        self.boots.add(st["boot_id"])
        sha = st["pipelines"][0]["model"]["sha256"]
        self.check_file(sha)

        # model states this boot made: a state the killed boot had committed to its outbox
        # just before the kill (say "downloading" 0.02 s after a command) is still delivered,
        # by the killed boot or by this one's outbox, after the mark: it is not this start-up's
        def states() -> list[dict[str, Any]]:
            return [s for s in dev.states(since) if epoch(s["ts"]) >= started]
        dev.wait("start-up model state", lambda: bool(states()))
        state = states()[0]
        assert state["state"] in {"active", "rolled_back"}, (state, self.notes)
        assert state["active"]["sha256"] == sha, (state, self.notes)

        # results of this boot: frames read after it started (the outbox may still send
        # results of the killed boot, made by the model that served then)
        def fresh() -> list[dict[str, Any]]:
            return [r for r in dev.results(since) if epoch(r["ts"]) >= started]
        dev.wait("results of the new boot", lambda: len(fresh()) >= 5, 60)
        assert fresh()[0]["model"]["sha256"] == sha, (fresh()[0], self.notes)
        # every start-up state message agrees (none says "active" before a "rolled_back")
        startup = list(itertools.takewhile(lambda x: x in {"active", "rolled_back"},
                                           (x["state"] for x in states())))
        assert set(startup) == {state["state"]}, (states(), self.notes)
        if self.notes:
            why = f" ({state['reason']})" if state["reason"] else ""
            self.notes[-1] += (f"; restarted {state['state']} on {state['active']['name']} "
                               f"v{state['active']['version']}{why}")
        busy = {"downloading", "verifying", "validating"}
        if pending is not None and (dev.reply(pending[0], since) is not None or any(
                s["state"] in busy for s in states())):
            rid, new = pending
            ok = dev.wait_reply(rid, since)["ok"]
            if ok:
                def watched() -> bool:
                    now = states()
                    return any(s["state"] == "rolled_back" for s in now) or sum(
                        s["state"] == "active" and s["sha256"] == new for s in now) >= 2
                dev.wait("the end of the watch", watched)
            self.notes[-1] += ("; the command was delivered again: "
                               f"{'active' if ok else 'refused'}")
        for r in fresh():
            self.check_file(r["model"]["sha256"])
