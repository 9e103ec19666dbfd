"""USB recovery hooks against a fake sysfs tree, and the hook running before a re-probe."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config import ModelConfig
from edge_agent.default_models import default_models_dir
from edge_agent.runtime.targets import TargetRuntime, target_specs
from edge_agent.runtime.usb_recovery import UsbReset
from tests.delegate import TestDelegate

DEVICE = "1-1.2"


def _sysfs(root: Path) -> Path:
    """bus/usb/devices/1-1.2 -> devices/usb1/1-1/1-1.2, bound to drivers/usb, like Linux."""
    real = root / "devices" / "usb1" / "1-1" / DEVICE
    real.mkdir(parents=True)
    (real / "authorized").write_text("1\n")
    drivers = root / "bus" / "usb" / "drivers" / "usb"
    drivers.mkdir(parents=True)
    (drivers / "bind").write_text("")
    (drivers / "unbind").write_text("")
    devices = root / "bus" / "usb" / "devices"
    devices.mkdir(parents=True)
    os.symlink(os.path.relpath(real, devices), devices / DEVICE)
    os.symlink(os.path.relpath(drivers, real), real / "driver")
    return real


def test_authorized_toggles_off_then_on(tmp_path: Path) -> None:
    real = _sysfs(tmp_path)
    seen: list[str] = []
    reset = UsbReset(DEVICE, "authorized", settle_s=0.0, sysfs_root=tmp_path,
                     wait=lambda s: seen.append((real / "authorized").read_text()))
    assert reset() == f"reset USB device {DEVICE} (authorized)"
    assert seen == ["0", "1"]  # off during the pause, on again before the settle wait


def test_rebind_unbinds_then_binds_through_the_driver(tmp_path: Path) -> None:
    _sysfs(tmp_path)
    drv = tmp_path / "bus" / "usb" / "drivers" / "usb"
    seen: list[tuple[str, str]] = []
    reset = UsbReset(DEVICE, "rebind", settle_s=0.0, sysfs_root=tmp_path,
                     wait=lambda s: seen.append(((drv / "unbind").read_text(),
                                                 (drv / "bind").read_text())))
    assert reset() == f"reset USB device {DEVICE} (rebind)"
    assert seen == [(DEVICE, ""), (DEVICE, DEVICE)]


def test_a_missing_device_or_no_permission_is_reported_not_raised(tmp_path: Path) -> None:
    assert "is not present" in (UsbReset("3-9", sysfs_root=tmp_path)() or "")
    real = _sysfs(tmp_path)
    (real / "authorized").unlink()
    (real / "authorized").mkdir()  # unwritable even for root
    msg = UsbReset(DEVICE, sysfs_root=tmp_path, wait=lambda s: None)() or ""
    assert msg.startswith(f"could not reset USB device {DEVICE}") and "SERVICE.md" in msg


def test_recovery_needs_a_device() -> None:
    with pytest.raises(ValidationError, match="device is required"):
        ModelConfig.model_validate({"path": "m.tflite", "targets": [
            {"delegate": "edgetpu", "recovery": {"enabled": True}}, "cpu"]})


def test_the_hook_runs_before_each_re_probe_of_the_failed_target(
        tmp_path: Path, test_delegate: TestDelegate) -> None:
    model = default_models_dir() / "face_detection_short_range.tflite"
    if not model.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    real = _sysfs(tmp_path / "sys")
    cfg = ModelConfig.model_validate({"path": str(model), "threads": 1, "targets": [
        {"delegate": str(test_delegate.path), "name": "vendor",
         "options": test_delegate.options(),
         "recovery": {"enabled": True, "device": DEVICE, "settle_s": 0}}, "cpu"]})
    specs = target_specs(cfg, sysfs_root=tmp_path / "sys")
    assert specs[0].recover is not None and specs[1].recover is None
    rt = TargetRuntime(specs, threads=1, reprobe_s=0.05, reprobe_max_s=0.1)
    try:
        assert rt.active == "vendor"
        (real / "authorized").write_text("untouched")
        test_delegate.set("fail_invoke")
        rt.infer([np.zeros((1, 128, 128, 3), np.float32)])
        assert rt.active == "cpu"
        assert (real / "authorized").read_text() == "untouched"  # not on failover itself
        test_delegate.set("ok")
        deadline = time.monotonic() + 60
        while rt.active != "vendor":
            assert time.monotonic() < deadline
            rt.infer([np.zeros((1, 128, 128, 3), np.float32)])
            time.sleep(0.02)
        assert (real / "authorized").read_text() == "1"  # the probe reset the device first
        vendor = rt.targets()[0]
        assert vendor["recovery"] == f"reset USB device {DEVICE} (authorized)"
    finally:
        rt.close()
