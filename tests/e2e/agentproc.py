"""Run ``edge-agent run`` as a child process and watch what a subscriber receives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from edge_agent.mqtt.subscriber import Subscriber

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as YAML."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Inbox:
    """Every message a subscriber of a topic filter received, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.messages: list[tuple[str, bytes, bool]] = []

    def __call__(self, topic: str, payload: bytes, retained: bool) -> None:
        with self.cond:
            self.messages.append((topic, payload, retained))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[str, bytes, bool]]], bool],
                 timeout: float) -> bool:
        """Wait until ``pred(messages)`` holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.2))
            return True

    def json(self, suffix: str) -> list[dict[str, Any]]:
        """Decoded payloads of topics ending with ``suffix``."""
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix) and p]

    def count(self, suffix: str) -> int:
        with self.lock:
            return sum(1 for t, _, _ in self.messages if t.endswith(suffix))


def subscribe(host: str, port: int, topics: list[str], inbox: Inbox, **kw: Any) -> Subscriber:
    sub = Subscriber(host, port, topics, inbox, **kw)
    assert sub.start(10), "subscriber could not subscribe"
    return sub


class AgentProcess:
    """``python -m edge_agent run -c FILE`` owned by the test, stopped by PID."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".log")
        n = 1
        while self.log_path.exists():  # restarts keep the earlier runs' logs
            self.log_path = config_path.with_suffix(f".{n}.log")
            n += 1
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", *(args or ["run", "-c", str(config_path)])],
            stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """This run's output so far (also after the process ended)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop (then fail loudly)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGUSR1)  # the agent dumps its threads' stacks
                time.sleep(1.0)
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError("agent did not stop on SIGTERM:\n" + self.log()) from None
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL (crash tests)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()
