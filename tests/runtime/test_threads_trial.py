"""``threads: auto``'s trial in the running pipeline (``threads_auto.PipelineTrial``).

The decision rule is driven here by a clock the test advances: each frame takes as long as the
serving interpreter's thread count is made to take, so the expected pick is known exactly.
The interpreter switch itself is tested on the real default model through
``TargetRuntime.cpu_variant`` / ``exchange``, and the whole trial in a real pipeline on a
generated MJPEG clip (``test_pipeline_trial_on_a_real_model``). No test asserts a timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime import threads_auto
from edge_agent.runtime.threads_auto import (
    TOLERANCE,
    PipelineTrial,
    ThreadChoice,
    TrialSlot,
    choice_again,
)


class _Interp:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Runtime:
    """What the trial uses of a TargetRuntime: a CPU variant per count, and the exchange."""

    def __init__(self, threads: int, delegate: bool = False) -> None:
        self.serving = self.first = _Interp(threads)
        self.delegate = delegate
        self.made: list[_Interp] = []  # the variants the trial asked for

    def idle(self) -> list[_Interp]:
        """Every interpreter there was but the one serving now."""
        return [i for i in [self.first, *self.made] if i is not self.serving]

    def cpu_variant(self, threads: int) -> _Interp | None:
        if self.delegate:
            return None
        made = _Interp(threads)
        self.made.append(made)
        return made

    def exchange(self, interp: _Interp) -> _Interp | None:
        if self.delegate:
            return None
        old, self.serving = self.serving, interp
        return old


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 0.0


def _run(trial: PipelineTrial, rt: _Runtime, clock: _Clock, frame_s: dict[int, float],
         frames: int = 100_000, cpu_per_thread: float = 1.0,
         gap_every: int = 0, gap_s: float = 0.0) -> int:
    """Feed frames until the trial decides; each takes ``frame_s[serving threads]``."""
    for i in range(frames):
        if not trial.active:
            return i
        n = rt.serving.threads
        clock.now += frame_s[n]
        clock.cpu += frame_s[n] * cpu_per_thread * n
        if gap_every and i % gap_every == 0:
            clock.now += gap_s
        trial.frame_done()
    return frames


def _trial(rt: _Runtime, clock: _Clock, picked: int = 2,
           candidates: tuple[int, ...] = (1, 2), slot: TrialSlot | None = None
           ) -> PipelineTrial:
    choice = ThreadChoice(picked, candidates, {n: 1.0 for n in candidates})
    return PipelineTrial(rt, choice, slot=slot, clock=lambda: clock.now, cpu=lambda: clock.cpu)


@pytest.mark.parametrize(("frame_s", "expected"), [
    ({1: 1 / 170, 2: 1 / 139}, 1),  # BlazeFace-like: fewer threads, faster pipeline
    ({1: 1 / 41, 2: 1 / 52}, 2),  # COCO SSD-like: the second thread pays
    ({1: 1 / 30, 2: 1 / 30}, 1),  # a 30 fps camera either keeps up with: the fewest threads
    ({1: 1 / 100, 2: 1 / (100 * (1 + TOLERANCE / 2))}, 1),  # within the tolerance: fewer
])
def test_the_pick_follows_the_pipelines_frame_rate(frame_s: dict[int, float],
                                                    expected: int) -> None:
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, frame_s)
    assert not trial.active and trial.choice is not None
    assert trial.choice.threads == expected == rt.serving.threads
    fps = trial.choice.pipeline_fps
    assert set(fps) == {1, 2}
    for n in (1, 2):  # what was measured is what the clock said
        assert fps[n] == pytest.approx(1 / frame_s[n], rel=0.01)
    assert trial.choice.pipeline_cpu_ms[2] == pytest.approx(2000 * frame_s[2], rel=0.01)
    assert trial.choice.median_ms == {1: 1.0, 2: 1.0}  # the load-time figures are kept
    assert rt.idle() and all(i.closed for i in rt.idle())
    assert not rt.serving.closed
    assert f"threads auto -> {expected} in the pipeline" in trial.choice.describe()


def test_three_candidates_take_turns_forward_then_back() -> None:
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock, candidates=(1, 2, 3))
    seen: list[int] = []
    frame_s = {1: 0.01, 2: 0.006, 3: 0.0059}
    while trial.active:
        n = rt.serving.threads
        if not seen or seen[-1] != n:
            seen.append(n)
        clock.now += frame_s[n]
        trial.frame_done()
    seen.append(rt.serving.threads)
    # 2 served during the warm-up; then 1,2,3 / 3,2,1 / 1,2,3; then the pick, 2 (3 is within
    # the tolerance of it but has more threads)
    assert seen == [2, 1, 2, 3, 2, 1, 2, 3, 2]
    assert trial.choice is not None and trial.choice.threads == 2


def test_pauses_between_frames_do_not_count() -> None:
    """A gate that closes now and then (5 s without frames) does not make a count look slow."""
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, {1: 1 / 50, 2: 1 / 80}, gap_every=37, gap_s=5.0)
    assert trial.choice is not None and trial.choice.threads == 2
    assert trial.choice.pipeline_fps[2] == pytest.approx(80, rel=0.01)


def test_a_slow_model_is_compared_too() -> None:
    """0.8 s per frame is no pause for a model whose invoke took that long at load."""
    rt, clock = _Runtime(2), _Clock()
    choice = ThreadChoice(2, (1, 2), {1: 1400.0, 2: 800.0})
    trial = PipelineTrial(rt, choice, clock=lambda: clock.now, cpu=lambda: clock.cpu)
    _run(trial, rt, clock, {1: 1.4, 2: 0.8})
    assert trial.choice is not None and trial.choice.threads == 2
    assert trial.choice.pipeline_fps[1] == pytest.approx(1 / 1.4, rel=0.01)


def test_too_few_frames_keep_the_load_time_pick() -> None:
    """A slow sensor (a frame every 2 s, each a pause) never fills a turn: after the deadline
    the pick made at load stays and the spare interpreters are closed."""
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, {1: 2.0, 2: 2.0}, frames=200)
    assert not trial.active and trial.choice is None
    assert rt.serving.threads == 2
    assert rt.made and all(i.closed for i in rt.idle())


def test_the_deadline_also_passes_while_no_frame_comes() -> None:
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, {1: 0.01, 2: 0.01}, frames=int(threads_auto.TRIAL_WARMUP_S / 0.01) + 5)
    assert trial.active and rt.made  # measuring, the spare loaded
    clock.now += threads_auto.TRIAL_DEADLINE_S / 2
    assert not trial.overdue() and trial.active
    clock.now += threads_auto.TRIAL_DEADLINE_S
    assert trial.overdue() and not trial.active
    assert rt.serving.threads == 2 and all(i.closed for i in rt.made)


def test_a_delegate_is_left_alone() -> None:
    rt, clock = _Runtime(2, delegate=True), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, {2: 0.01})
    assert not trial.active and trial.choice is None and rt.serving.threads == 2


def test_a_failover_during_the_trial_ends_it() -> None:
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, {1: 0.01, 2: 0.01}, frames=int(threads_auto.TRIAL_WARMUP_S / 0.01) + 5)
    assert trial.active
    rt.delegate = True  # the runtime moved to a delegate: exchange refuses
    _run(trial, rt, clock, {1: 0.01, 2: 0.01})
    assert not trial.active and trial.choice is None
    # the spare is closed; what the runtime held when it failed over is the runtime's to retire
    assert rt.idle() and all(i.closed for i in rt.idle())


def test_abort_keeps_the_serving_interpreter() -> None:
    rt, clock = _Runtime(2), _Clock()
    trial = _trial(rt, clock)
    _run(trial, rt, clock, {1: 0.01, 2: 0.01}, frames=int(threads_auto.TRIAL_WARMUP_S / 0.01)
         + 20)
    serving = rt.serving
    trial.abort()
    trial.frame_done()  # nothing more happens
    assert rt.serving is serving and not serving.closed
    assert rt.idle() and all(i.closed for i in rt.idle())


def test_trials_sharing_a_slot_measure_one_at_a_time() -> None:
    """Two pipelines' trials: the second waits until the first has decided, then decides by
    its own frames (each pipeline here gets a frame in turn)."""
    slot, clock = TrialSlot(), _Clock()
    rt_a, rt_b = _Runtime(2), _Runtime(2)
    a, b = _trial(rt_a, clock, slot=slot), _trial(rt_b, clock, slot=slot)
    frame_s = {"a": {1: 1 / 170, 2: 1 / 139}, "b": {1: 1 / 41, 2: 1 / 52}}
    b_waited = False
    for _ in range(100_000):
        if not (a.active or b.active):
            break
        for name, trial, rt in (("a", a, rt_a), ("b", b, rt_b)):
            clock.now += frame_s[name][rt.serving.threads]
            trial.frame_done()
        if a.active and a.choice is None and rt_a.made:  # a measures
            assert not rt_b.made, "b began while a was measuring"
            b_waited = True
    assert b_waited
    assert a.choice is not None and a.choice.threads == 1 == rt_a.serving.threads
    assert b.choice is not None and b.choice.threads == 2 == rt_b.serving.threads
    assert slot.take(object())  # both released it


def test_an_aborted_trial_frees_the_slot() -> None:
    slot, clock = TrialSlot(), _Clock()
    rt_a, rt_b = _Runtime(2), _Runtime(2)
    a, b = _trial(rt_a, clock, slot=slot), _trial(rt_b, clock, slot=slot)
    warm = int(threads_auto.TRIAL_WARMUP_S / 0.01) + 2
    for _ in range(warm):
        clock.now += 0.01
        a.frame_done()
        b.frame_done()
    assert rt_a.made and not rt_b.made  # a took the slot, b waits
    a.abort()
    clock.now += 0.01
    b.frame_done()
    assert rt_b.made  # b measures now
    _run(b, rt_b, clock, {1: 0.01, 2: 0.02})
    assert b.choice is not None and b.choice.threads == 1


def test_a_trial_made_again_starts_from_the_count_serving_now() -> None:
    load = ThreadChoice(2, (1, 2), {1: 5.0, 2: 4.0}, {1: 150.0, 2: 120.0}, {1: 6.0, 2: 9.0})
    again = choice_again(load, serving=1, budget=2)
    assert again is not None
    assert (again.threads, again.candidates, again.pipeline_fps) == (1, (1, 2), {})
    assert again.median_ms == load.median_ms  # the slow-model limits still come from load
    # fewer CPUs left than the count serving: that count is still a candidate
    assert choice_again(load, serving=2, budget=1) == again.__class__(
        2, (1, 2), load.median_ms)
    assert choice_again(load, serving=1, budget=1) is None  # one candidate: nothing to try
    assert choice_again(load, serving=1, budget=3).candidates == (1, 2, 3)  # type: ignore[union-attr]
    # serving 1 while a CPU is taken: the trial from 1 keeps 1 when 2 is no faster
    rt, clock = _Runtime(1), _Clock()
    trial = PipelineTrial(rt, again, clock=lambda: clock.now, cpu=lambda: clock.cpu)
    _run(trial, rt, clock, {1: 0.01, 2: 0.01})
    assert trial.choice is not None and trial.choice.threads == 1 == rt.serving.threads
    assert not rt.first.closed and all(i.closed for i in rt.idle())


# ---------------------------------------------------------------- the real interpreter switch


@pytest.fixture(scope="module")
def model() -> Path:
    from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models

    return ensure_default_models()[DEFAULT_MODEL]


def test_target_runtime_exchanges_its_cpu_interpreter(model: Path) -> None:
    from edge_agent.config import ModelConfig
    from edge_agent.runtime.targets import TargetRuntime, target_specs

    rt = TargetRuntime(target_specs(ModelConfig(path=model)), threads=2)
    try:
        x = [np.zeros(t.shape, np.dtype(t.dtype)) for t in rt.signature.inputs]
        before = [a.copy() for a in rt.infer(x)]
        variant = rt.cpu_variant(1)
        assert variant is not None and variant.info.threads == 1
        old = rt.exchange(variant)
        assert old is not None and old.info.threads == 2
        assert rt.info.threads == 1
        after = rt.infer(x)
        for a, b in zip(before, after, strict=True):  # the same model, the same answer
            np.testing.assert_allclose(a, b, atol=1e-5)
        old.close()
        # a later reload (a failed target's reprobe, say) keeps the count serving now
        assert rt.built_as(target_specs(ModelConfig(path=model)), threads=1,
                           invoke_timeout_s=rt.invoke_timeout_s,
                           load_timeout_s=rt.load_timeout_s, reprobe_s=rt.reprobe_s,
                           reprobe_max_s=rt.reprobe_max_s)
    finally:
        rt.close()
    spare = _Interp(1)
    assert rt.exchange(spare) is None  # type: ignore[arg-type]  # closed: nothing changes


def test_pipeline_trial_on_a_real_model(model: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial in a real pipeline on a generated MJPEG clip: it decides by the documented
    rule from what it measured, the runtime serves the pick, the status says so, and no frame
    of the file is lost while interpreters are switched."""
    from edge_agent.bundle import load_bundle
    from edge_agent.config import PipelineConfig
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.egress import EgressGuard
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.factory import create_source
    from edge_agent.sources.synthetic import write_clip
    from tests.fakes import RecordingTransport

    monkeypatch.setattr(threads_auto, "TRIAL_WARMUP_S", 0.2)
    monkeypatch.setattr(threads_auto, "TRIAL_SLICE_S", 0.1)
    monkeypatch.setattr(threads_auto, "TRIAL_SLICE_FRAMES", 5)
    clip = tmp_path / "clip.avi"
    frames = 400  # about 160 are needed at 200 fps, fewer on a slower machine
    write_clip(clip, width=320, height=240, seconds=frames / 10, fps=10,
               episodes=[(0.5, frames / 10 - 0.5)])
    cfg = PipelineConfig.model_validate({
        "name": "cam", "source": {"type": "video", "uri": str(clip), "fps": 0},
        "model": {"path": str(model), "threads": "auto"}})
    from edge_agent import bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "cpu_budget", lambda _others: 2)
    bundle = load_bundle(cfg.model, 0.5)
    assert bundle.thread_choice is not None and bundle.thread_choice.candidates == (1, 2)
    seal = new_seal()
    transport = RecordingTransport()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    pipe = Pipeline(cfg, bundle, source_factory=create_source,
                    policy=PrivacyPolicy(cfg.privacy, "cam", "dev", seal), send=guard.send)
    try:
        pipe.start()
        pipe.join(120)
        status = pipe.status()
        trial = pipe.thread_trial
        assert trial is not None and not trial.active
        assert trial.choice is not None, f"{frames} frames were not enough for the trial"
        fps = trial.choice.pipeline_fps
        best = max(fps.values())
        assert trial.choice.threads == min(n for n, f in fps.items()
                                           if f >= best * (1 - TOLERANCE))
        assert bundle.runtime.info.threads == trial.choice.threads
        runtime = status["runtime"]
        assert runtime["threads"] == trial.choice.threads
        assert runtime["threads_pipeline"].startswith(f"1: {fps[1]} fps")
        assert status["frames"] == status["inferred"] == status["published"] == frames
        assert status["errors"] == 0
        indexes = [json.loads(m.payload)["frame"]["index"] for m in transport.messages
                   if m.topic == "edge-agent/dev/results/cam"]
        assert sorted(indexes) == list(range(frames))
    finally:
        pipe.stop()
        bundle.close()


def test_a_running_pipeline_tries_again_when_asked(model: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``Pipeline.try_threads_again`` (the pipeline set, when other pipelines came or went):
    a new trial from the count serving now, decided on the real frames; the status keeps the
    last outcome; with one candidate left there is nothing to try."""
    import time

    from edge_agent.bundle import load_bundle
    from edge_agent.config import PipelineConfig
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.factory import create_source
    from edge_agent.sources.synthetic import write_clip

    monkeypatch.setattr(threads_auto, "TRIAL_WARMUP_S", 0.2)
    monkeypatch.setattr(threads_auto, "TRIAL_SLICE_S", 0.1)
    monkeypatch.setattr(threads_auto, "TRIAL_SLICE_FRAMES", 5)
    from edge_agent import bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "cpu_budget", lambda _others: 2)
    clip = tmp_path / "clip.avi"
    write_clip(clip, width=320, height=240, seconds=10, fps=10, episodes=[(0.5, 9.5)])
    cfg = PipelineConfig.model_validate({
        "name": "cam", "source": {"type": "video", "uri": str(clip), "fps": 0, "loop": True},
        "model": {"path": str(model), "threads": "auto"}})
    bundle = load_bundle(cfg.model, 0.5)
    pipe = Pipeline(cfg, bundle, source_factory=create_source, send=lambda _m: True,
                    policy=PrivacyPolicy(cfg.privacy, "cam", "dev", new_seal()))

    def decided(previous: PipelineTrial | None) -> PipelineTrial:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            trial = pipe.thread_trial
            if trial is not None and trial is not previous and trial.choice is not None:
                return trial
            assert pipe.state in {"starting", "running"}, pipe.state
            time.sleep(0.05)
        raise AssertionError("no trial decided within 90 s")

    try:
        pipe.start()
        first = decided(None)
        assert first.choice is not None
        pipe.try_threads_again(2)
        second = decided(first)
        assert second.load_choice.threads == first.choice.threads  # from the count serving
        assert second.load_choice.candidates == (1, 2)
        assert second.choice is not None
        assert bundle.runtime.info.threads == second.choice.threads
        status = pipe.status()["runtime"]
        assert status["threads_pipeline"].startswith(f"1: {second.choice.pipeline_fps[1]} fps")
        # one CPU left for it: 1 serving means nothing to try; 2 serving is tried against 1
        pipe.try_threads_again(1)
        deadline = time.monotonic() + 30
        while pipe.thread_trial is second and time.monotonic() < deadline:
            time.sleep(0.02)
        third = pipe.thread_trial
        if second.choice.threads == 1:
            assert third is None
            # the last outcome is still what the status shows
            assert pipe.status()["runtime"]["threads_pipeline"] == status["threads_pipeline"]
        else:
            assert third is not None and third.load_choice.candidates == (1, 2)
    finally:
        pipe.stop()
        bundle.close()


def test_a_reload_that_adds_a_pipeline_makes_the_others_try_again(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PipelineSet.apply``: the pipeline it added runs its own trial; the one it kept tries
    its counts again beside it, with the CPUs the others leave it; trials take turns."""
    import time

    from edge_agent import bundle as bundle_mod
    from edge_agent import pipeline_set as set_mod
    from edge_agent.config import make_config
    from edge_agent.metrics import Metrics
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.egress import EgressGuard
    from edge_agent.sources.synthetic import write_clip
    from tests.fakes import RecordingTransport

    monkeypatch.setattr(threads_auto, "TRIAL_WARMUP_S", 0.2)
    monkeypatch.setattr(threads_auto, "TRIAL_SLICE_S", 0.1)
    monkeypatch.setattr(threads_auto, "TRIAL_SLICE_FRAMES", 5)
    monkeypatch.setattr(bundle_mod, "cpu_budget", lambda _others: 2)
    budgets: list[int] = []

    def budget(others: int) -> int:
        budgets.append(others)
        return 2

    monkeypatch.setattr(set_mod, "cpu_budget", budget)
    clip = tmp_path / "clip.avi"
    write_clip(clip, width=320, height=240, seconds=10, fps=10, episodes=[(0.5, 9.5)])

    def pipeline(name: str) -> dict[str, object]:
        return {"name": name, "source": {"type": "video", "uri": str(clip), "fps": 0,
                                         "loop": True},
                "model": {"path": str(model), "threads": "auto"}}

    def config(*names: str) -> object:
        return make_config(device_id="dev", state_dir=str(tmp_path / "state"),
                           pipelines=[pipeline(n) for n in names])

    seal = new_seal()
    cfg = config("one")
    guard = EgressGuard(RecordingTransport(), "edge-agent", "dev", None, seal)
    pipes = set_mod.PipelineSet(cfg, seal, guard, Metrics(), None,  # type: ignore[arg-type]
                                on_state=lambda _s: None)

    def decided(name: str, previous: PipelineTrial | None) -> PipelineTrial:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            trial = pipes.units[name].pipeline.thread_trial
            if trial is not None and trial is not previous and trial.choice is not None:
                return trial
            time.sleep(0.05)
        raise AssertionError(f"{name}: no trial decided within 90 s")

    try:
        pipes.start_all()
        first = decided("one", None)
        assert pipes.apply(config("one", "two")) == ["added two"]  # type: ignore[arg-type]
        again = decided("one", first)
        assert again.load_choice.candidates == (1, 2)
        two_load = pipes.units["two"].pipeline.bundle.thread_choice
        assert two_load is not None and budgets == [two_load.threads]  # two as loaded
        decided("two", None)
        assert pipes.units["one"].pipeline.thread_trial is again  # asked once, not per frame
    finally:
        pipes.stop_all()
