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
from edge_agent.runtime.threads_auto import TOLERANCE, PipelineTrial, ThreadChoice


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
           candidates: tuple[int, ...] = (1, 2)) -> PipelineTrial:
    choice = ThreadChoice(picked, candidates, {n: 1.0 for n in candidates})
    return PipelineTrial(rt, choice, clock=lambda: clock.now, cpu=lambda: clock.cpu)


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
