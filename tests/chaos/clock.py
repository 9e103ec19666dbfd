"""The agent's wall clock, stepped from outside the process: Debian's libfaketime
(``faketime`` package) preloaded into ``edge-agent run``.

The offset lives in a file libfaketime re-reads at most every second
(``FAKETIME_TIMESTAMP_FILE``, ``FAKETIME_CACHE_DURATION=1``), so the run can make the clock
jump forward and back while the agent runs. The monotonic clock is left alone
(``FAKETIME_DONT_FAKE_MONOTONIC=1``), as on an NTP step. Everything in the process sees the
stepped wall clock: Python's ``time.time`` and ``datetime``, and C code (SQLite, OpenSSL,
FFmpeg).

libfaketime 0.9.10 (Debian 12) breaks monotonic absolute sleeps in that mode (every
``time.sleep`` fails with EINVAL); :data:`SHIM` (built here with gcc) sends those straight to
the kernel. :func:`wall_clock_missing` says what is missing, or None.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

SHIM = Path(__file__).resolve().parent / "faketime" / "clock_nanosleep.c"
LIB_GLOBS = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1",
             "/usr/local/lib/faketime/libfaketime.so.1")


def libfaketime() -> str | None:
    """The path of libfaketime.so.1, or None."""
    for pattern in LIB_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def wall_clock_missing() -> str | None:
    """Why the wall clock cannot be stepped here (what to install), or None."""
    if libfaketime() is None:
        return "libfaketime is not installed (apt-get install faketime)"
    if shutil.which("gcc") is None:
        return ("gcc is not installed (it builds the fix for libfaketime 0.9.10's sleeps; "
                "apt-get install gcc)")
    return None


class WallClock:
    """A wall-clock offset for processes started with :meth:`env`.

    Args:
        folder: where the offset file and the built shim go.

    Raises:
        RuntimeError: libfaketime or gcc is missing, or the shim does not build.
    """

    def __init__(self, folder: Path) -> None:
        why = wall_clock_missing()
        if why is not None:
            raise RuntimeError(why)
        lib = libfaketime()
        assert lib is not None
        folder.mkdir(parents=True, exist_ok=True)
        self.shim = folder / "clock_nanosleep.so"
        done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(self.shim),
                               str(SHIM), "-ldl"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building {SHIM.name} failed: {done.stderr.strip()}")
        self.lib = lib
        self.file = folder / "faketime.rc"
        self.offset_s = 0
        self.set(0)

    def env(self) -> dict[str, str]:
        """Environment variables that put a process on this clock."""
        return {"LD_PRELOAD": f"{self.shim}:{self.lib}",
                "FAKETIME_TIMESTAMP_FILE": str(self.file),
                "FAKETIME_CACHE_DURATION": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def set(self, offset_s: int) -> None:
        """Step the wall clock to real time + ``offset_s`` (seen within a second)."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        tmp.replace(self.file)
        self.offset_s = offset_s
