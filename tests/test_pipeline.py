"""Correctness of the threaded pipeline (not its speed: that is benchmarks/).

Fakes (tests/fakes.py) where outcomes must be exact: a source of frames whose grey level encodes
how many "persons" the fake model finds, the real Preprocessor, the real privacy policy and
egress guard over a recording transport. One test runs the default model on a real video file.
No assertion depends on timing; waits only have generous deadlines against hangs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config import PipelineConfig
from edge_agent.errors import SourceError
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from tests.fakes import FakeSource, RecordingTransport, fake_bundle

DEADLINE = 30.0  # against hangs only


def _cfg(**extra: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "cam", "source": {"type": "synthetic", "fps": 0},
        "model": {"path": "fake.tflite"}, **extra})


class Rig:
    """A pipeline on fakes, publishing through the real policy and guard."""

    def __init__(self, source_factory: Callable[[Any], Any], bundle: Any = None,
                 **cfg: Any) -> None:
        self.cfg = _cfg(**cfg)
        self.transport = RecordingTransport()
        seal = new_seal()
        self.guard = EgressGuard(self.transport, "edge-agent", "dev", None, seal)
        policy = PrivacyPolicy(self.cfg.privacy, "cam", "dev", seal)
        self.pipe = Pipeline(self.cfg, bundle or fake_bundle(), source_factory=source_factory,
                             policy=policy, send=self.guard.send)

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.transport.messages if "/results/" in m.topic]

    def wait_for(self, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not cond():
            assert time.monotonic() < deadline, "condition not reached (hang?)"
            time.sleep(0.01)

    def run_to_end(self) -> None:
        self.pipe.start()
        self.pipe.join(DEADLINE)
        self.pipe.stop()


def _threads_of(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-") and t.is_alive()]


def test_file_source_every_frame_in_order() -> None:
    levels = [k % 4 for k in range(60)]
    src = FakeSource(levels)
    rig = Rig(lambda _cfg: src)
    rig.run_to_end()
    res = rig.results()
    assert [r["frame"]["index"] for r in res] == list(range(60))
    assert [r["seq"] for r in res] == list(range(1, 61))
    assert [len(r["detections"]) for r in res] == levels
    st = rig.pipe.status()
    assert st["state"] == "finished"
    assert (st["frames"], st["inferred"], st["published"], st["dropped"]) == (60, 60, 60, 0)


def test_on_change_publishes_exactly_when_the_set_changes() -> None:
    levels = [0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 1, 1, 3, 3, 3, 3]
    rig = Rig(lambda _cfg: FakeSource(levels), publish="on_change", heartbeat_s=1e9)
    rig.run_to_end()
    changed = [i for i, v in enumerate(levels) if i == 0 or v != levels[i - 1]]
    assert [r["frame"]["index"] for r in rig.results()] == changed
    assert rig.pipe.status()["inferred"] == len(levels)


def test_on_change_heartbeat_republishes_an_unchanged_set() -> None:
    levels = [1] * 12
    rig = Rig(lambda _cfg: FakeSource(levels), publish="on_change", heartbeat_s=1e-9)
    rig.run_to_end()
    # the heartbeat is always due: every unchanged result goes out again
    assert [r["frame"]["index"] for r in rig.results()] == list(range(12))


def test_live_source_keeps_the_newest_frame_and_counts_drops() -> None:
    n = 40
    src = FakeSource([1] * n, live=True)

    def hold_first(call: int) -> None:
        if call == 0:  # the model is busy while the source delivers everything else
            assert src.exhausted.wait(DEADLINE)

    rig = Rig(lambda _cfg: src, bundle=fake_bundle(hook=hold_first))
    rig.run_to_end()
    idx = [r["frame"]["index"] for r in rig.results()]
    st = rig.pipe.status()
    assert idx == sorted(set(idx))  # still in order
    assert idx[-1] == n - 1  # the newest frame was inferred
    assert st["inferred"] + st["dropped"] == n == st["frames"]
    assert st["dropped"] >= n - 3  # at most: the held one, the one queued, the last


def test_swap_mid_stream_drops_no_frame_and_later_results_carry_the_new_model() -> None:
    n, at = 50, 20
    swapped = threading.Event()
    reached = threading.Event()

    def before(i: int) -> None:
        if i == at:
            reached.set()
            assert swapped.wait(DEADLINE)

    src = FakeSource([k % 3 for k in range(n)], before_frame=before)
    rig = Rig(lambda _cfg: src, bundle=fake_bundle("old", 0, size=8))
    new = fake_bundle("new", 1, size=12)  # another input size: queued frames are re-prepared
    rig.pipe.start()
    assert reached.wait(DEADLINE)
    assert rig.pipe.swap(new, timeout=DEADLINE)
    swapped.set()
    rig.pipe.join(DEADLINE)
    rig.pipe.stop()
    res = rig.results()
    assert [r["frame"]["index"] for r in res] == list(range(n))
    names = [r["model"]["name"] for r in res]
    first_new = names.index("new")
    assert first_new <= at
    assert names == ["old"] * first_new + ["new"] * (n - first_new)
    assert [len(r["detections"]) for r in res] == [k % 3 for k in range(n)]
    assert rig.pipe.bundle is new
    assert rig.pipe.status()["errors"] == 0


def test_failing_source_is_retried_and_shows_in_status() -> None:
    state = {"opens": 0, "allow": False}
    seen: dict[str, Any] = {}

    class Flaky(FakeSource):
        def open(self) -> None:
            state["opens"] += 1
            if not state["allow"]:
                raise SourceError("camera unplugged")
            super().open()

    src = Flaky([1] * 10)
    rig = Rig(lambda _cfg: src)
    rig.pipe.start()
    rig.wait_for(lambda: state["opens"] >= 2)
    st = rig.pipe.status()
    seen.update(state=st["state"], error=st["source_error"])
    assert not rig.pipe.healthy(time.monotonic() + 1e6)  # stale heartbeats are unhealthy
    state["allow"] = True
    rig.pipe.join(DEADLINE)
    rig.pipe.stop()
    assert seen == {"state": "reconnecting", "error": "camera unplugged"}
    st = rig.pipe.status()
    assert st["state"] == "finished" and st["source_error"] is None
    assert [r["frame"]["index"] for r in rig.results()] == list(range(10))


def test_read_error_mid_stream_reopens_the_source() -> None:
    class Glitchy(FakeSource):
        failed = False

        def read(self, timeout: float) -> object:
            if self._i == 5 and not self.failed:
                self.failed = True
                raise SourceError("stream lost")
            return super().read(timeout)

    src = Glitchy([2] * 10)
    rig = Rig(lambda _cfg: src)
    rig.run_to_end()
    assert src.opened == 2 and src.closed >= 2
    assert [r["frame"]["index"] for r in rig.results()] == list(range(10))
    assert rig.pipe.status()["source_error"] is None


def test_stop_is_clean_within_its_deadline_and_leaves_no_thread() -> None:
    src = FakeSource([1], live=True, loop_forever=True)
    rig = Rig(lambda _cfg: src)
    rig.pipe.start()
    rig.wait_for(lambda: len(rig.results()) >= 5)
    assert len(_threads_of("cam")) == 3
    rig.pipe.stop(timeout=10.0)
    assert _threads_of("cam") == []
    assert src.closed >= 1
    assert rig.pipe.status()["state"] == "stopped"
    assert rig.pipe.healthy()


def test_stop_while_a_file_source_is_blocked_on_a_full_queue() -> None:
    release = threading.Event()

    def slow(call: int) -> None:
        if call == 0:
            release.wait(DEADLINE)

    rig = Rig(lambda _cfg: FakeSource([1] * 100), bundle=fake_bundle(hook=slow))
    rig.pipe.start()
    rig.wait_for(lambda: rig.pipe._q_in.full())
    release.set()
    rig.pipe.stop(timeout=10.0)
    assert _threads_of("cam") == []
    idx = [r["frame"]["index"] for r in rig.results()]
    assert idx == list(range(len(idx)))  # whatever was done, in order and without gaps


def test_swap_before_start_applies_at_once() -> None:
    rig = Rig(lambda _cfg: FakeSource([1] * 3))
    new = fake_bundle("new", 2)
    assert rig.pipe.swap(new, timeout=1.0)
    rig.run_to_end()
    assert {r["model"]["name"] for r in rig.results()} == {"new"}


def test_default_model_on_a_real_video_file_every_frame_in_order(tmp_path: Path) -> None:
    from edge_agent.bundle import load_bundle
    from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
    from edge_agent.sources.factory import create_source
    from edge_agent.sources.synthetic import write_clip

    model = ensure_default_models()[DEFAULT_MODEL]
    clip = tmp_path / "clip.avi"
    write_clip(clip, seconds=2.0, fps=10, episodes=[(0.5, 1.5)])
    cfg = PipelineConfig.model_validate({
        "name": "door", "source": {"type": "video", "uri": str(clip), "fps": 0},
        "model": {"path": str(model), "threads": 1}})
    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    bundle = load_bundle(cfg.model, cfg.score_threshold)
    pipe = Pipeline(cfg, bundle, source_factory=create_source,
                    policy=PrivacyPolicy(cfg.privacy, "door", "dev", seal), send=guard.send)
    pipe.start()
    pipe.join(DEADLINE)
    pipe.stop()
    res = [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]
    assert [r["frame"]["index"] for r in res] == list(range(20))
    assert {(r["frame"]["width"], r["frame"]["height"]) for r in res} == {(640, 480)}
    assert pipe.status()["state"] == "finished"


def test_a_source_that_keeps_failing_is_retrying_not_stalled() -> None:
    # the backoff between reopens doubles up to 30 s, the default stall_timeout_s: a camera
    # that is down for minutes must not read as a stalled pipeline, or the systemd watchdog
    # restarts the whole daemon over it
    opens = []

    class Down(FakeSource):
        def open(self) -> None:
            opens.append(time.monotonic())
            raise SourceError("camera unplugged")

    rig = Rig(lambda _cfg: Down([1]), stall_timeout_s=3)
    rig.pipe.start()
    unhealthy = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while len(opens) < 5:  # waits of 0.5, 1, 2, 4 s: the last outlasts the stall timeout
            assert time.monotonic() < deadline, f"only {len(opens)} opens (hang?)"
            unhealthy += not rig.pipe.healthy()
            time.sleep(0.05)
        assert rig.pipe.status()["source_error"] == "camera unplugged"
    finally:
        rig.pipe.stop()
    assert unhealthy == 0, f"unhealthy on {unhealthy} checks while the source was retried"
