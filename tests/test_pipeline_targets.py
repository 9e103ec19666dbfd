"""A pipeline whose delegate disappears mid-run and comes back, with a real delegate.

The default face model runs on a video file, every frame in order, through the real policy and
egress guard; the test delegate (tests/delegate) serves first, then fails (its library renamed
away and its invoke failing, or hanging), then comes back. Results must continue throughout with
seq gap-free and every frame answered, each change must be reported (event, status, stats), and
the pipeline must end back on the delegate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.bundle import load_bundle
from edge_agent.config import PipelineConfig
from edge_agent.default_models import default_models_dir
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.sources.factory import create_source
from tests.delegate import TestDelegate
from tests.fakes import RecordingTransport

DEADLINE = 90.0  # against hangs only


def _wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Run:
    """The default model on a looping clip, targets [test delegate, cpu]."""

    def __init__(self, tmp_path: Path, d: TestDelegate, **model: Any) -> None:
        from edge_agent.sources.synthetic import write_clip

        weights = default_models_dir() / "face_detection_short_range.tflite"
        if not weights.exists():
            pytest.skip("default model missing (edge-agent models fetch)")
        clip = tmp_path / "clip.avi"
        write_clip(clip, seconds=2.0, fps=10, episodes=[(0.5, 1.5)])
        self.cfg = PipelineConfig.model_validate({
            "name": "door", "source": {"type": "video", "uri": str(clip), "fps": 5,
                                       "loop": True},
            "model": {"path": str(weights), "threads": 1,
                      "targets": [{"delegate": str(d.path), "name": "vendor",
                                   "options": d.options()}, "cpu"],
                      "reprobe_s": 0.2, "reprobe_max_s": 0.5, **model}})
        self.transport = RecordingTransport()
        seal = new_seal()
        guard = EgressGuard(self.transport, "edge-agent", "dev", None, seal)
        bundle = load_bundle(self.cfg.model, self.cfg.score_threshold)
        self.pipe = Pipeline(self.cfg, bundle, source_factory=create_source,
                             policy=PrivacyPolicy(self.cfg.privacy, "door", "dev", seal),
                             send=guard.send)
        self.seen_targets: list[str] = []

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.transport.messages
                if f"/{kind}/" in m.topic]

    def results(self) -> int:
        return len(self.payloads("results"))

    def more_results(self, n: int) -> None:
        """Wait for ``n`` more results, noting the target serving meanwhile."""
        want = self.results() + n
        def enough() -> bool:
            target = self.pipe.status()["target"]
            if not self.seen_targets or self.seen_targets[-1] != target:
                self.seen_targets.append(target)
            return self.results() >= want
        _wait(enough, f"{n} more results")


@pytest.mark.parametrize("failure", ["fail_invoke", "hang"])
def test_delegate_goes_away_and_comes_back_without_losing_a_frame(
        tmp_path: Path, test_delegate: TestDelegate, failure: str) -> None:
    run = Run(tmp_path, test_delegate, invoke_timeout_s=1.0)
    pipe = run.pipe
    assert pipe.status()["target"] == "vendor"
    pipe.start()
    try:
        run.more_results(5)
        on_delegate = test_delegate.invocations()
        assert on_delegate > 0
        away = test_delegate.hide()  # the accelerator disappears ...
        test_delegate.set(failure)  # ... and its running interpreter fails or wedges
        _wait(lambda: pipe.status()["target"] == "cpu", "failover to the cpu")
        run.more_results(8)  # served by the CPU meanwhile, probes failing (no library)
        status = pipe.status()
        assert status["targets"] == {"vendor": "failed", "cpu": "active"} or \
            status["targets"]["vendor"] == "probing"
        assert "vendor" in (status["runtime"]["fallback"] or "")
        test_delegate.set("ok")  # a hung invoke returns now; its worker ends
        test_delegate.restore(away)
        _wait(lambda: pipe.status()["target"] == "vendor", "the return to the delegate")
        back_at = test_delegate.invocations()
        run.more_results(5)
        assert test_delegate.invocations() > back_at  # claimed nodes run in it again
    finally:
        pipe.stop()
        st = pipe.status()
        pipe.bundle.close()
    results = run.payloads("results")
    # one seq per pipeline over its results and events: gap-free across both
    seqs = sorted(m["seq"] for m in results + run.payloads("events"))
    assert seqs == list(range(1, len(seqs) + 1))
    frames = [r["frame"]["index"] for r in results]
    assert frames == list(range(frames[0], frames[0] + len(frames)))  # no frame lost
    assert all(r["inference_ms"] >= 0 for r in results)
    events = [e for e in run.payloads("events") if e["event"] == "target_changed"]
    assert [(e["from"], e["to"]) for e in events] == [("vendor", "cpu"), ("cpu", "vendor")]
    expected = "hung" if failure == "hang" else "invoke failed"
    assert expected in events[0]["reason"]
    assert events[1]["reason"] == "re-probe passed warm-up"
    assert run.seen_targets[0] == "vendor" and "cpu" in run.seen_targets
    assert run.seen_targets[-1] == "vendor"
    assert st["target"] == "vendor" and st["target_changes"] == 2
    assert st["errors"] == 0
