"""Execution targets with a real external delegate (tests/delegate, compiled with gcc).

The delegate claims the default face model's RESHAPE and RELU nodes and runs them in its own
kernel, so results on it equal the CPU's exactly while every claimed node is counted; its control
file makes it fail at Prepare, fail at invoke, hang, or return NaN.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.default_models import default_models_dir
from edge_agent.errors import ModelError
from edge_agent.runtime.interpreter import TfliteRuntime
from edge_agent.runtime.targets import TargetRuntime, TargetSpec
from edge_agent.types import TargetChange
from tests.conftest import active_backend
from tests.delegate import TestDelegate

DEADLINE = 60.0  # against hangs only
CLAIMED_PER_INVOKE = 21  # the face model's 4 RESHAPE + 17 RELU nodes


@pytest.fixture
def model() -> Path:
    path = default_models_dir() / "face_detection_short_range.tflite"
    if not path.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    return path


def _frame(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)]


def _cpu_outputs(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    rt = TfliteRuntime(model, threads=1)
    try:
        return rt.infer(inputs)
    finally:
        rt.close()


def _targets(d: TestDelegate, model: Path, **kw: float) -> TargetRuntime:
    specs = [TargetSpec("vendor", str(d.path), d.options(), model),
             TargetSpec("cpu", None, {}, model)]
    params = {"invoke_timeout_s": 2.0, "load_timeout_s": 20.0, "reprobe_s": 0.05,
              "reprobe_max_s": 0.2, **kw}
    return TargetRuntime(specs, threads=1, **params)


def _infer_until(rt: TargetRuntime, want: str, seed: int = 0) -> int:
    """Run frames until ``want`` serves (probes are looked at between frames)."""
    import time

    deadline = time.monotonic() + DEADLINE
    n = 0
    while rt.active != want:
        assert time.monotonic() < deadline, f"still on {rt.active}, want {want}"
        rt.infer(_frame(seed + n))
        n += 1
        time.sleep(0.02)
    return n


def test_claimed_nodes_run_in_the_delegate_with_the_options_it_was_given(
        test_delegate: TestDelegate, model: Path) -> None:
    rt = _targets(test_delegate, model)
    try:
        assert rt.active == "vendor"
        assert rt.info.delegate == "vendor" and rt.info.fallback_reason is None
        before = test_delegate.invocations()
        inputs = _frame(1)
        out = rt.infer(inputs)
        assert test_delegate.invocations() - before == CLAIMED_PER_INVOKE
        for got, want in zip(out, _cpu_outputs(model, inputs), strict=True):
            np.testing.assert_array_equal(got, want)
        assert "DELEGATE" in rt.ops()
    finally:
        rt.close()
    lines = test_delegate.log_lines()
    assert "option claim=reshape,relu" in lines
    assert f"option control_file={test_delegate.control}" in lines
    assert f"prepare claimed={CLAIMED_PER_INVOKE}" in lines
    assert "destroyed" in lines


def test_a_delegate_that_claims_nothing_still_serves_everything_on_its_cpu_kernels(
        delegate_library: Path, tmp_path: Path, model: Path) -> None:
    d = TestDelegate(delegate_library, tmp_path / "none", claim="none")
    rt = _targets(d, model)
    try:
        assert rt.active == "vendor"  # it loaded and passed warm-up: nothing was delegated
        inputs = _frame(2)
        out = rt.infer(inputs)
        assert d.invocations() == 0
        for got, want in zip(out, _cpu_outputs(model, inputs), strict=True):
            np.testing.assert_array_equal(got, want)
    finally:
        rt.close()
    assert "prepare claimed=0" in d.log_lines()


def test_a_delegate_that_fails_at_prepare_leaves_the_model_on_the_cpu(
        test_delegate: TestDelegate, model: Path) -> None:
    test_delegate.set("fail_prepare")
    rt = _targets(test_delegate, model, reprobe_s=60.0, reprobe_max_s=60.0)
    try:
        assert rt.active == "cpu"
        states = {t["name"]: t for t in rt.targets()}
        assert states["vendor"]["state"] == "failed"
        assert "Prepare failed" in states["vendor"]["reason"]
        assert states["cpu"]["state"] == "active"
        assert rt.info.delegate is None
        assert rt.info.fallback_reason is not None and "vendor" in rt.info.fallback_reason
        assert "prepare failed" in test_delegate.log_lines()
    finally:
        rt.close()


@pytest.mark.parametrize("mode", ["fail_invoke", "nan"])
def test_failure_mid_run_reruns_the_frame_on_the_cpu_and_the_delegate_comes_back(
        test_delegate: TestDelegate, model: Path, mode: str) -> None:
    rt = _targets(test_delegate, model)
    changes: list[TargetChange] = []
    rt.on_change = changes.append
    try:
        rt.infer(_frame(0))
        test_delegate.set(mode)
        inputs = _frame(7)
        out = rt.infer(inputs)  # fails on the delegate, re-run on the CPU: same frame, answered
        assert rt.active == "cpu"
        for got, want in zip(out, _cpu_outputs(model, inputs), strict=True):
            np.testing.assert_array_equal(got, want)
        assert [(c.previous, c.current) for c in changes] == [("vendor", "cpu")]
        expected = "invoke failed" if mode == "fail_invoke" else "non-finite"
        assert expected in changes[0].reason
        # still broken: probes fail (a NaN warm-up does not pass) and back off
        _infer_until_probed(rt, test_delegate)
        assert rt.active == "cpu"
        failures = {t["name"]: t["failures"] for t in rt.targets()}["vendor"]
        assert failures >= 2
        test_delegate.set("ok")
        _infer_until(rt, "vendor")
        assert [(c.previous, c.current) for c in changes] == [("vendor", "cpu"),
                                                               ("cpu", "vendor")]
        assert changes[1].reason == "re-probe passed warm-up"
        before = test_delegate.invocations()
        rt.infer(_frame(3))
        assert test_delegate.invocations() - before == CLAIMED_PER_INVOKE
    finally:
        rt.close()


def _infer_until_probed(rt: TargetRuntime, d: TestDelegate) -> None:
    """Run frames until at least one re-probe has failed after the failover."""
    import time

    deadline = time.monotonic() + DEADLINE
    while {t["name"]: t["failures"] for t in rt.targets()}["vendor"] < 2:
        assert time.monotonic() < deadline, "no re-probe happened"
        rt.infer(_frame(5))
        time.sleep(0.02)


def test_a_hung_invoke_is_abandoned_and_the_frame_served_by_the_cpu(
        test_delegate: TestDelegate, model: Path) -> None:
    rt = _targets(test_delegate, model, invoke_timeout_s=0.5)
    changes: list[TargetChange] = []
    rt.on_change = changes.append
    try:
        rt.infer(_frame(0))
        test_delegate.set("hang")
        inputs = _frame(9)
        box: list[list[np.ndarray]] = []
        t = threading.Thread(target=lambda: box.append(rt.infer(inputs)), name="caller")
        t.start()
        t.join(DEADLINE)
        assert not t.is_alive(), "infer stayed blocked on the hung delegate"
        assert rt.active == "cpu"
        for got, want in zip(box[0], _cpu_outputs(model, inputs), strict=True):
            np.testing.assert_array_equal(got, want)
        assert "hung" in changes[0].reason
        hung = [th for th in threading.enumerate() if th.name == "target-vendor"]
        assert hung, "the hung worker should still be blocked in the delegate"
        test_delegate.set("ok")  # the wedge clears: the abandoned worker ends on its own
        for th in hung:
            th.join(DEADLINE)
            assert not th.is_alive()
        _infer_until(rt, "vendor")
    finally:
        rt.close()


def test_the_library_disappearing_is_a_failed_probe_until_it_is_back(
        test_delegate: TestDelegate, model: Path) -> None:
    rt = _targets(test_delegate, model)
    try:
        test_delegate.set("fail_invoke")
        away = test_delegate.hide()
        rt.infer(_frame(0))
        assert rt.active == "cpu"
        _infer_until_probed(rt, test_delegate)
        reason = {t["name"]: t["reason"] for t in rt.targets()}["vendor"]
        assert "no such file" in reason
        test_delegate.restore(away)
        test_delegate.set("ok")
        _infer_until(rt, "vendor")
    finally:
        rt.close()


def test_back_off_doubles_up_to_its_maximum(test_delegate: TestDelegate, model: Path) -> None:
    test_delegate.set("fail_prepare")
    rt = _targets(test_delegate, model, reprobe_s=0.05, reprobe_max_s=0.1)
    try:
        _infer_until_probed(rt, test_delegate)
        states = rt._states  # the back-off itself is internal state
        assert states[0].backoff == pytest.approx(0.1)
    finally:
        rt.close()


def test_only_a_delegate_that_fails_is_a_model_error(test_delegate: TestDelegate,
                                                      model: Path) -> None:
    test_delegate.set("fail_create")
    with pytest.raises(ModelError, match="delegate"):
        TargetRuntime([TargetSpec("vendor", str(test_delegate.path), test_delegate.options(),
                                  model)], threads=1)


def test_a_target_file_with_other_tensors_is_refused(test_delegate: TestDelegate, model: Path
                                                     ) -> None:
    if active_backend() == "tflite_runtime":
        # tflite-runtime 2.14 dies with SIGSEGV building this interpreter with a delegate that
        # fails at prepare (LiteRT falls back cleanly); it would take the whole pass with it
        pytest.skip("tflite-runtime 2.14 crashes (SIGSEGV) here; LiteRT only (SERVICE.md)")
    other = default_models_dir() / "face_detection_full_range_sparse.tflite"  # 192x192 input
    if not other.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    test_delegate.set("fail_prepare")
    rt = TargetRuntime([TargetSpec("vendor", str(test_delegate.path), test_delegate.options(),
                                   other), TargetSpec("cpu", None, {}, model)], threads=1,
                       reprobe_s=0.05, reprobe_max_s=0.1)
    try:
        assert rt.active == "cpu"
        test_delegate.set("ok")
        _infer_until_probed(rt, test_delegate)
        assert rt.active == "cpu"
        reason = {t["name"]: t["reason"] for t in rt.targets()}["vendor"]
        assert "other input/output tensors" in reason
    finally:
        rt.close()


def test_no_model_file_for_a_target_leaves_it_unavailable(model: Path) -> None:
    rt = TargetRuntime([TargetSpec("edgetpu", "edgetpu", {}, None),
                        TargetSpec("cpu", None, {}, model)], threads=1)
    try:
        assert rt.active == "cpu"
        states = {t["name"]: t for t in rt.targets()}
        assert states["edgetpu"]["state"] == "unavailable"
        assert states["edgetpu"]["reason"] == "no model file for this target"
    finally:
        rt.close()


def test_a_failover_through_a_delegate_that_hangs_in_its_load_keeps_the_caller_alive(
        delegate_library: Path, tmp_path: Path, model: Path) -> None:
    first = TestDelegate(delegate_library, tmp_path / "a")
    second = TestDelegate(delegate_library, tmp_path / "b")
    specs = [TargetSpec("a", str(first.path), first.options(), model),
             TargetSpec("b", str(second.path), second.options(), model),
             TargetSpec("cpu", None, {}, model)]
    rt = TargetRuntime(specs, threads=1, load_timeout_s=1.5, reprobe_s=60.0,
                       reprobe_max_s=60.0)
    ticks: list[float] = []
    rt.on_wait = lambda: ticks.append(0.0)
    changes: list[TargetChange] = []
    rt.on_change = changes.append
    try:
        assert rt.active == "a"
        first.set("fail_invoke")
        second.set("hang")  # b's warm-up hangs: its load outlives load_timeout_s
        rt.infer(_frame(1))
        assert rt.active == "cpu"
        assert [(c.previous, c.current) for c in changes] == [("a", "cpu")]
        states = {t["name"]: t for t in rt.targets()}
        assert "load and warm-up hung" in states["b"]["reason"]
        assert ticks, "the caller was not told it is alive while it waited"
    finally:
        first.set("ok")
        second.set("ok")
        rt.close()
