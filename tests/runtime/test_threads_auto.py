"""``model: {threads: auto}`` on the default model: a valid count is picked from recorded
measurements by the documented rule, other pipelines' threads shrink the candidates, and the
choice reaches the bundle's runtime and the pipeline's status. Nothing asserts a timing: only
that the choice is consistent with what was measured."""

from __future__ import annotations

import pytest

from edge_agent.bundle import load_bundle
from edge_agent.config import ModelConfig, parse_config
from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from edge_agent.errors import ConfigError
from edge_agent.runtime.threads_auto import TOLERANCE, cpu_budget, pick_threads


@pytest.fixture(scope="module")
def model() -> object:
    return ensure_default_models()[DEFAULT_MODEL]


def test_budget_leaves_other_pipelines_threads() -> None:
    assert cpu_budget(0, cpus=4) == 4
    assert cpu_budget(3, cpus=4) == 1
    assert cpu_budget(9, cpus=4) == 1  # never below one thread
    assert cpu_budget(0) >= 1


def test_pick_records_every_candidate_and_follows_the_rule(model: object) -> None:
    choice = pick_threads(model, budget=2, invokes=3)  # type: ignore[arg-type]
    assert choice.candidates == (1, 2)
    assert set(choice.median_ms) == {1, 2} and all(ms > 0 for ms in choice.median_ms.values())
    best = min(choice.median_ms.values())
    assert choice.threads in (1, 2)
    assert choice.median_ms[choice.threads] <= best * (1 + TOLERANCE)
    for fewer in range(1, choice.threads):  # every smaller count was too slow
        assert choice.median_ms[fewer] > best * (1 + TOLERANCE)
    assert f"threads auto -> {choice.threads}" in choice.describe()


def test_one_cpu_left_means_one_thread_without_measuring(model: object) -> None:
    choice = pick_threads(model, budget=1)  # type: ignore[arg-type]
    assert (choice.threads, choice.candidates, choice.median_ms) == (1, (1,), {})
    # the log line says why, rather than an empty list of measurements
    assert choice.describe() == ("threads auto -> 1 (the only count: the process's CPUs less "
                                 "the other pipelines' interpreter threads leave no more)")


def test_load_bundle_runs_with_the_picked_count(model: object) -> None:
    cfg = ModelConfig(path=model, threads="auto")  # type: ignore[arg-type]
    bundle = load_bundle(cfg, 0.5, busy_threads=0)
    try:
        choice = bundle.thread_choice
        assert choice is not None and choice.candidates == tuple(range(1, cpu_budget(0) + 1))
        assert bundle.runtime.info.threads == choice.threads
    finally:
        bundle.close()
    # a later load (an update's swap) measures again, within what other pipelines left
    bundle = load_bundle(cfg, 0.5, busy_threads=64)
    try:
        assert bundle.thread_choice is not None and bundle.thread_choice.candidates == (1,)
        assert bundle.runtime.info.threads == 1
    finally:
        bundle.close()
    fixed = load_bundle(ModelConfig(path=model, threads=1), 0.5)  # type: ignore[arg-type]
    try:
        assert fixed.thread_choice is None and fixed.runtime.info.threads == 1
    finally:
        fixed.close()


def test_pipeline_status_reports_the_choice(model: object) -> None:
    from edge_agent.config import PipelineConfig
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.egress import EgressGuard
    from edge_agent.privacy.policy import PrivacyPolicy
    from tests.fakes import FakeSource, RecordingTransport

    cfg = PipelineConfig.model_validate({"name": "cam", "source": {"type": "synthetic"},
                                         "model": {"path": str(model), "threads": "auto"}})
    bundle = load_bundle(cfg.model, 0.5)
    seal = new_seal()
    guard = EgressGuard(RecordingTransport(), "edge-agent", "dev", None, seal)
    pipe = Pipeline(cfg, bundle, source_factory=lambda _c: FakeSource([1]),
                    policy=PrivacyPolicy(cfg.privacy, "cam", "dev", seal), send=guard.send)
    try:
        runtime = pipe.status()["runtime"]
        assert runtime["threads_mode"] == "auto"
        assert runtime["threads"] == bundle.runtime.info.threads
        assert "1: " in runtime["threads_measured"] or cpu_budget(0) == 1
    finally:
        bundle.close()


def test_config_accepts_auto_or_a_count_only() -> None:
    base = "pipelines: [{name: a, source: {type: synthetic}, model: {path: m.tflite, threads: %s}}]"
    assert parse_config(base % "auto").pipelines[0].model.threads == "auto"
    assert parse_config(base % "3").pipelines[0].model.threads == 3
    for bad in ("fast", "0", "65"):
        with pytest.raises(ConfigError, match="threads"):
            parse_config(base % bad)
