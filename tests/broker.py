"""A real mosquitto broker for tests, on a free loopback port, owned and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or None."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class Mosquitto:
    """A mosquitto process the test owns: start, stop (kill by PID), restart on the same port.

    Args:
        workdir: folder for its config, log and persistence file.
        extra_config: lines appended to the listener config (TLS, auth).
        persistence: keep sessions and queued QoS 1 messages across restarts.
    """

    def __init__(self, workdir: Path, extra_config: str = "", persistence: bool = True,
                 port: int | None = None) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = extra_config
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def conf_path(self) -> Path:
        """The generated mosquitto.conf."""
        return self.workdir / "mosquitto.conf"

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "allow_anonymous" not in self.extra_config else "",
            # started as root, mosquitto drops to the `mosquitto` user, which cannot write the
            # log and persistence file into pytest's 0700 tmp folders (sessions would be lost
            # on restart) nor read certificates there
            "user root" if os.geteuid() == 0 and "user " not in self.extra_config else "",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"log_dest file {self.workdir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            "message_size_limit 0",
            self.extra_config,
        ]
        self.conf_path.write_text("\n".join(x for x in lines if x) + "\n")

    def start(self) -> Mosquitto:
        """Start the broker and wait until it accepts connections."""
        self._write_conf()
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            wait_port(self.port)
        except TimeoutError:
            self.stop()
            log = (self.workdir / "mosquitto.log")
            raise RuntimeError("mosquitto did not start: " +
                               (log.read_text() if log.exists() else "no log")) from None
        return self

    def stop(self) -> None:
        """Stop the broker by PID (SIGTERM, then SIGKILL) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port (with its persisted sessions)."""
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
