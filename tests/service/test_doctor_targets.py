"""`edge-agent doctor` shows each execution target's state (real test delegate, no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import PipelineConfig
from edge_agent.default_models import default_models_dir
from edge_agent.doctor import FAIL, OK, WARN, check_pipeline
from tests.delegate import TestDelegate


def _pipeline(model: Path, targets: list[object]) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "cam", "source": {"type": "synthetic", "fps": 0, "frames": 5},
        "model": {"path": str(model), "threads": 1, "targets": targets}})


@pytest.fixture
def model() -> Path:
    path = default_models_dir() / "face_detection_short_range.tflite"
    if not path.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    return path


def test_each_target_is_loaded_and_shown(model: Path, test_delegate: TestDelegate) -> None:
    vendor = {"delegate": str(test_delegate.path), "name": "vendor",
              "options": test_delegate.options()}
    checks = {c.name: c for c in check_pipeline(_pipeline(model, [vendor, "edgetpu", "cpu"]))}
    assert checks["cam: target vendor"].status == OK
    assert "would serve" in checks["cam: target vendor"].detail
    assert checks["cam: target edgetpu"].status == WARN  # no libedgetpu on this machine
    assert checks["cam: target edgetpu"].fix
    assert checks["cam: target cpu"].status == OK
    assert "standby" in checks["cam: target cpu"].detail
    assert checks["cam: model"].status == OK and "on vendor" in checks["cam: model"].detail
    assert checks["cam: decoder"].status == OK


def test_a_failing_first_target_is_a_warning_and_the_next_serves(
        model: Path, test_delegate: TestDelegate) -> None:
    test_delegate.set("fail_prepare")
    vendor = {"delegate": str(test_delegate.path), "name": "vendor",
              "options": test_delegate.options()}
    checks = {c.name: c for c in check_pipeline(_pipeline(model, [vendor, "cpu"]))}
    assert checks["cam: target vendor"].status == WARN
    assert "Prepare failed" in checks["cam: target vendor"].detail
    assert checks["cam: model"].status == WARN and "on cpu" in checks["cam: model"].detail


def test_no_target_that_works_fails(model: Path, test_delegate: TestDelegate) -> None:
    test_delegate.set("fail_invoke")
    vendor = {"delegate": str(test_delegate.path), "options": test_delegate.options()}
    checks = {c.name: c for c in check_pipeline(_pipeline(model, [vendor]))}
    assert checks["cam: model"].status == FAIL
    assert "invoke failed" in checks["cam: model"].detail
