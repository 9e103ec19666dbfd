"""Recovery for a wedged USB accelerator: reset the device through sysfs before a re-probe.

A Coral USB stick that stops answering usually comes back after the kernel drops and re-adds
it. Two ways, both through sysfs (``/sys/bus/usb/devices/<name>``, e.g. ``1-1.2``):

* ``authorized``: write ``0`` then ``1`` to the device's ``authorized`` file (the kernel
  disconnects the device and enumerates it again);
* ``rebind``: write the device name to its driver's ``unbind`` and then ``bind`` file.

Both need write access to those files, which a hardened unit does not have by default (see
SERVICE.md). The hook runs on the probe's worker thread, never on a pipeline's thread, and a
failure to reset is reported, not raised: the probe goes ahead and fails or passes on its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

OFF_S = 0.5  # how long the device stays de-authorized or unbound


class UsbReset:
    """A recovery hook for one USB device (``TargetSpec.recover``).

    Args:
        device: the device's sysfs name, e.g. ``1-1.2``.
        method: ``authorized`` or ``rebind``.
        settle_s: wait after the reset, for the device to enumerate again.
        sysfs_root: the sysfs mount (tests use a fake tree).
        wait: how to wait (``time.sleep``; tests record the device's state instead).
    """

    def __init__(self, device: str, method: str = "authorized", settle_s: float = 2.0, *,
                 sysfs_root: Path = Path("/sys"),
                 wait: Callable[[float], object] = time.sleep) -> None:
        if method not in {"authorized", "rebind"}:
            raise ValueError(f"unknown USB recovery method {method!r}")
        self.device = device
        self.method = method
        self.settle_s = settle_s
        self._root = sysfs_root
        self._wait = wait

    @property
    def budget_s(self) -> float:
        """How long a reset may take in all (added to the probe's deadline)."""
        return OFF_S + self.settle_s + 5.0

    def __call__(self) -> str | None:
        """Reset the device; returns one line saying what was done (or why not)."""
        dev = self._root / "bus" / "usb" / "devices" / self.device
        if not dev.exists():
            return f"USB device {self.device} is not present ({dev}): nothing to reset"
        try:
            if self.method == "authorized":
                self._write(dev / "authorized", "0")
                self._wait(OFF_S)
                self._write(dev / "authorized", "1")
            else:
                driver = (dev / "driver").resolve()
                if not (driver / "unbind").exists():
                    return f"USB device {self.device} has no driver bound: nothing to rebind"
                self._write(driver / "unbind", self.device)
                self._wait(OFF_S)
                self._write(driver / "bind", self.device)
        except OSError as exc:
            return (f"could not reset USB device {self.device} ({self.method}): "
                    f"{exc.strerror or exc} (the unit needs write access to {dev}; see "
                    "SERVICE.md)")
        self._wait(self.settle_s)
        return f"reset USB device {self.device} ({self.method})"

    @staticmethod
    def _write(path: Path, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)
