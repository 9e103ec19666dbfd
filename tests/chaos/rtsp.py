"""An RTSP camera served by the test: :mod:`tests.chaos.rtsp_serve` (GStreamer's
gst-rtsp-server) run by Debian's ``/usr/bin/python3`` as a separate process, serving a clip
written with OpenCV (the synthetic scene: moving figures on a textured background).

``kill()`` ends the server with SIGKILL (the camera lost power); ``start()`` serves again on
the same port. :func:`rtsp_server_missing` says why the server cannot run here, or None.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import cv2

from edge_agent.config import SyntheticSourceConfig
from edge_agent.sources.synthetic import SyntheticSource
from tests.broker import free_port

SYSTEM_PYTHON = "/usr/bin/python3"
SERVE = Path(__file__).resolve().parent / "rtsp_serve.py"
PACKAGES = ("gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
            "python3-gi")


def rtsp_server_missing() -> str | None:
    """Why the RTSP server cannot run here (what to install), or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing (Debian's python3 runs the RTSP server)"
    probe = ("import gi; gi.require_version('Gst', '1.0'); "
             "gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "missing = [e for e in ('filesrc', 'avidemux', 'jpegdec', 'jpegenc', "
             "'rtpjpegpay', 'videoconvert') if Gst.ElementFactory.find(e) is None]; "
             "print(' '.join(missing))")
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True,
                              timeout=30, check=False, env=_clean_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the RTSP server's probe failed: {exc}"
    if done.returncode != 0:
        return (f"gst-rtsp-server for {SYSTEM_PYTHON} is missing (apt-get install {PACKAGES}): "
                f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()} (apt-get install {PACKAGES})"
    return None


def _clean_env() -> dict[str, str]:
    """The environment without the venv's and the test's Python settings."""
    return {k: v for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_PRELOAD"}}


def write_clip(path: Path, *, seconds: float, fps: float = 10, width: int = 320,
               height: int = 240) -> Path:
    """An MJPEG AVI of the synthetic scene, written with OpenCV."""
    scene = SyntheticSource(SyntheticSourceConfig(
        type="synthetic", width=width, height=height, seed=5, objects=3))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    try:
        for i in range(round(seconds * fps)):
            writer.write(scene.render(i))
    finally:
        writer.release()
    return path


class RtspServer:
    """``rtsp://127.0.0.1:<port>/cam`` serving ``clip`` (each client from its start)."""

    def __init__(self, clip: Path, log: Path, *, port: int | None = None) -> None:
        self.clip = clip
        self.log = log
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """The stream's URL."""
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start the server process and wait for its ``ready`` line."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVE), "--port", str(self.port), "--path", "/cam",
                 "--clip", str(self.clip)],
                stdout=subprocess.PIPE, stderr=log, env=_clean_env())
        assert self.proc.stdout is not None
        try:
            line = _readline(self.proc, timeout)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"the RTSP server did not start within {timeout:.0f}s "
                               f"(log: {self.log})") from None
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"the RTSP server did not start: {self.log.read_text()[-500:]}")
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL the server process (by its PID) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """One line of ``proc``'s stdout within ``timeout`` seconds (TimeoutError otherwise)."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError
    return proc.stdout.readline()
