"""A real TFLite external delegate for the tests, compiled with gcc from edge_test_delegate.c.

``TestDelegate`` is one copy of the library (its own file, so its own invocation counter and
its own path to rename away), with a control file that switches its behaviour at run time and
a log file of what it received.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "edge_test_delegate.c"
MODES = ("ok", "fail_create", "fail_prepare", "fail_invoke", "hang", "nan")


def compile_delegate(out: Path, *, ci: bool) -> Path:
    """Compile the delegate into ``out`` (a .so); skip (fail under CI) without gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        msg = "gcc is not installed (./dev test installs it: apt-get install gcc libc6-dev)"
        if ci:
            pytest.fail(msg)
        pytest.skip(msg)
    subprocess.run([gcc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
                    "-o", str(out), str(SOURCE), "-lm"], check=True, capture_output=True,
                   text=True)
    return out


class TestDelegate:
    """One loadable copy of the delegate with its control and log files."""

    __test__ = False  # not a pytest test class

    def __init__(self, built: Path, folder: Path, claim: str = "reshape,relu") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "libedge_test_delegate.so"
        shutil.copy2(built, self.path)
        self.control = folder / "control"
        self.log = folder / "delegate.log"
        self.claim = claim
        self.set("ok")
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.edge_test_delegate_invocations.restype = ctypes.c_longlong

    def set(self, mode: str) -> None:
        """Switch behaviour: ok, fail_create, fail_prepare, fail_invoke, hang or nan."""
        assert mode in MODES
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(mode + "\n")
        tmp.replace(self.control)

    def options(self, **extra: str) -> dict[str, str]:
        """The options to load it with."""
        return {"claim": self.claim, "control_file": str(self.control),
                "log_file": str(self.log), **extra}

    def invocations(self) -> int:
        """Claimed nodes this copy has run since it was loaded."""
        return int(self._lib.edge_test_delegate_invocations())

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def hide(self) -> Path:
        """Rename the library away (the accelerator disappears); returns the new path."""
        away = self.path.with_name("gone.so")
        self.path.rename(away)
        return away

    def restore(self, away: Path) -> None:
        away.rename(self.path)
