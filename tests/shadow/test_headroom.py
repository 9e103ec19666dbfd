"""``when idle`` shadowing: the candidate runs only in the active pipeline's idle time, and a
shadow's totals survive a save and restore (the restart path)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import pytest

from edge_agent.bundle import ModelBundle, load_bundle
from edge_agent.config import ModelConfig, PipelineConfig
from edge_agent.default_models import ensure_default_models, labels_path, sample_images_dir
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.shadow import Agreement, ShadowRunner, figures_of
from edge_agent.shadow_headroom import ArrivalClock, RunBudget
from edge_agent.sources.factory import create_source
from edge_agent.sources.synthetic import write_clip
from edge_agent.types import Frame

SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"


def _bundle(name: str, threads: int = 1) -> ModelBundle:
    return load_bundle(ModelConfig(path=ensure_default_models()[name],
                                   labels=labels_path(name), threads=threads), 0.4)


def _frame() -> Frame:
    path = sample_images_dir() / "astronaut.png"
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None
    return Frame(0, time.time(), image=image)


def test_arrival_clock_predicts_the_next_frame() -> None:
    clock = ArrivalClock()
    assert clock.headroom_s(0.0) is None
    clock.arrived(10.0)
    assert clock.headroom_s(10.01) is None  # one frame: no interval yet
    clock.arrived(10.1)
    assert clock.headroom_s(10.15) == pytest.approx(0.05)
    clock.arrived(10.2)
    assert clock.headroom_s(10.3) == pytest.approx(0.0)  # due now
    budget = RunBudget()
    assert budget.need_s() is None and not budget.fits(1.0)
    for s in (0.010, 0.012, 0.011):
        budget.add(s)
    need = budget.need_s()
    assert need is not None and 0.011 < need < 0.02
    assert budget.fits(need) and not budget.fits(need * 0.9) and not budget.fits(None)


def test_when_idle_runs_the_candidate_only_where_it_fits() -> None:
    active = _bundle(SHORT)
    frame = _frame()
    inputs, transform = active.prepare(frame)
    inference = active.decode(active.runtime.infer(inputs), transform)
    runner = ShadowRunner("p", lambda: _bundle(FULL), active, every=1, when_idle=True,
                          report_s=3600)
    runner.start()  # loads on its thread and measures a run
    try:
        need = runner.budget.need_s()
        assert need is not None and need > 0
        assert runner.priority in ("SCHED_IDLE while invoking", "nice 19")
        runner.offer(frame, None, transform, inference, 2.0, idle=True, headroom_s=None)
        runner.offer(frame, None, transform, inference, 2.0, idle=True, headroom_s=need / 2)
        runner.offer(frame, None, transform, inference, 2.0, idle=False, headroom_s=10.0)
        assert runner.counters() == {"offered": 3, "sampled": 0, "dropped": 0,
                                     "skipped_busy": 3}
        runner.offer(frame, None, transform, inference, 2.0, idle=True, headroom_s=10.0)
        assert runner.counters()["sampled"] == 1
        deadline = time.monotonic() + 30
        while runner.agreement.frames < 1:
            assert time.monotonic() < deadline, "the candidate compared nothing"
            time.sleep(0.01)
    finally:
        runner.stop()
        active.close()


def test_totals_survive_a_save_and_restore() -> None:
    active, candidate = _bundle(SHORT), _bundle(SHORT)
    runner = ShadowRunner("p", candidate, active, every=1, report_s=3600)
    runner.start()
    frame = _frame()
    try:
        for _ in range(3):
            inputs, transform = active.prepare(frame)
            outputs = active.runtime.infer(inputs)
            runner.offer(frame, [x.copy() for x in inputs], transform,
                         active.decode(outputs, transform), 3.0)
            deadline = time.monotonic() + 30
            while runner._slot is not None or runner._running:
                assert time.monotonic() < deadline
                time.sleep(0.005)
    finally:
        runner.stop()
    saved = json.loads(json.dumps(runner.state()))  # what shadow.json holds
    assert figures_of(saved, 1, False) == runner.figures()
    again = ShadowRunner("p", _bundle(SHORT), active, every=1, resume=saved, report_s=3600)
    assert again.figures() == runner.figures() and again.agreement.frames == 3
    again.candidate.close()
    active.close()
    with pytest.raises(ValueError, match="saved shadow figures are not usable"):
        Agreement().restore({"frames": "many"})


def _run(clip: Path, fps: float, frames: int) -> ShadowRunner:
    cfg = PipelineConfig.model_validate({
        "name": "door", "source": {"type": "video", "uri": str(clip), "fps": fps,
                                   "loop": True},
        "model": {"path": str(ensure_default_models()[SHORT]), "threads": 1}})
    bundle = load_bundle(cfg.model, cfg.score_threshold)
    seal = new_seal()
    pipe = Pipeline(cfg, bundle, source_factory=create_source,
                    policy=PrivacyPolicy(cfg.privacy, "door", "dev", seal),
                    send=lambda _m: True)
    runner = ShadowRunner("door", lambda: _bundle(FULL), bundle, every=1, when_idle=True,
                          report_s=3600)
    runner.start()
    pipe.shadow = runner
    pipe.start()
    deadline = time.monotonic() + 60
    while runner.offered < frames:
        assert time.monotonic() < deadline and pipe.status()["state"] != "error"
        time.sleep(0.02)
    pipe.stop()
    runner.stop()
    bundle.close()
    return runner


def test_a_paced_source_leaves_the_candidate_idle_time_a_flat_out_one_none(
        tmp_path: Path) -> None:
    clip = tmp_path / "clip.avi"
    write_clip(clip, seconds=3.0, fps=10, episodes=[(0.5, 2.5)])
    # 200 ms between frames; each model needs a few ms (tens on a loaded machine)
    paced = _run(clip, 5, 15)
    assert paced.agreement.frames >= 0.3 * paced.offered, paced.counters()
    flat = _run(clip, 0, 200)  # the next frame is always due: no idle time
    assert flat.agreement.frames <= 0.25 * flat.offered, flat.counters()
    assert flat.skipped_busy >= 0.75 * flat.offered
