"""The agent's start-up loads each pipeline's model once: the start-up check (preflight) loads
it to check it, and the pipeline takes that runtime instead of loading the file again, unless
it would load something else (a stored update, another thread count): then it loads its own
and closes the checked one. Real models, real TFLite runtime."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig, load_config
from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models
from edge_agent.errors import ModelError
from edge_agent.preflight import preflight
from edge_agent.runtime.targets import TargetRuntime

LOADED = "target cpu: loaded"


@pytest.fixture(scope="module")
def model() -> Path:
    return ensure_default_models()[DEFAULT_MODEL]


def _config(tmp_path: Path, model: Path, *extra: str) -> tuple[AgentConfig, Path]:
    path = tmp_path / "config.yaml"
    path.write_text(f"device_id: d\nstate_dir: {tmp_path / 'state'}\npipelines:\n"
                    "  - name: a\n    source: {type: synthetic, frames: 3}\n"
                    f"    model:\n      path: {model}\n      threads: 1\n"
                    + "".join(f"      {line}\n" for line in extra))
    config, _ = load_config(path)
    return config, path


def _loads(caplog: pytest.LogCaptureFixture) -> int:
    return sum(LOADED in r.getMessage() for r in caplog.records)


def _closed(runtime: TargetRuntime) -> bool:
    try:
        runtime.infer([np.zeros(s.shape, s.dtype) for s in runtime.signature.inputs])
    except ModelError as exc:
        return "closed" in str(exc)
    return False


def test_the_checked_runtime_serves_the_pipeline(tmp_path: Path, model: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config, path = _config(tmp_path, model)
    checked: dict[str, TargetRuntime] = {}
    assert preflight(config, path, open_sources=False, keep=checked) == []
    assert list(checked) == ["a"] and _loads(caplog) == 1
    runtime = checked.pop("a")
    p = config.pipelines[0]
    bundle = load_bundle(p.model, p.score_threshold, loaded=runtime)
    try:
        assert bundle.runtime is runtime
        assert _loads(caplog) == 1  # the model file was loaded once
    finally:
        bundle.close()
    assert _closed(runtime)


def test_another_file_or_thread_count_loads_anew_and_closes_the_checked_one(
        tmp_path: Path, model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config, path = _config(tmp_path, model)
    p = config.pipelines[0]
    update = tmp_path / "update.tflite"  # a stored update serves instead of model.path
    shutil.copy2(model, update)
    for kwargs in ({"path": update}, {}):
        checked: dict[str, TargetRuntime] = {}
        assert preflight(config, path, open_sources=False, keep=checked) == []
        runtime = checked.pop("a")
        before = _loads(caplog)
        m = p.model if kwargs else p.model.model_copy(update={"threads": 2})
        bundle = load_bundle(m, p.score_threshold, loaded=runtime, **kwargs)
        try:
            assert bundle.runtime is not runtime
            assert _loads(caplog) == before + 1
            assert _closed(runtime)
        finally:
            bundle.close()


def test_a_failed_check_keeps_nothing(tmp_path: Path, model: Path) -> None:
    # the face model has no SSD outputs: the decoder check fails
    config, path = _config(tmp_path, model, "decoder: ssd")
    checked: dict[str, TargetRuntime] = {}
    problems = preflight(config, path, open_sources=False, keep=checked)
    assert problems and "decoder" in problems[0]
    assert checked == {}
