"""A camera that cannot be opened is retried quietly: OpenCV's own ``[ WARN:...]`` lines are
off, and our log says once that they are (and how to see them)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from edge_agent.config import CameraSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.camera import OpencvCameraSource
s = OpencvCameraSource(CameraSourceConfig(type="camera", uri="/dev/video97"))
for _ in range(3):
    try:
        s.open()
    except SourceError as exc:
        print("retry:", exc, file=sys.stderr)
"""


def _run(**env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    full.update(PYTHONPATH=str(REPO), **env)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=full, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_opencv_warnings_are_quiet_and_said_once() -> None:
    err = _run()
    assert err.count("retry: camera '/dev/video97' cannot be opened") == 3, err
    assert "[ WARN" not in err and "VIDEOIO" not in err, err
    assert err.count("OpenCV's own warnings are quieted") == 1, err


def test_opencv_log_level_from_the_environment_wins() -> None:
    err = _run(OPENCV_LOG_LEVEL="WARNING")
    assert "[ WARN" in err, err  # the control: OpenCV does warn about this camera
    assert "OpenCV's own warnings are quieted" not in err
