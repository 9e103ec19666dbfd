"""Shared fixtures: real broker, real models (skipped cleanly when ../shared is absent),
and autouse guards that fail a test which leaves a thread running or logs an unexpected
exception."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Mosquitto, mosquitto_binary
from tests.delegate import TestDelegate, compile_delegate

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = (REPO.parent / "shared" / "models").resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def active_backend() -> str:
    """The TFLite backend this test run uses: ``tflite_runtime`` in the tflite-runtime pass
    (``./dev test-tflite`` sets ``EDGE_AGENT_BACKEND``), else LiteRT."""
    wanted = os.environ.get("EDGE_AGENT_BACKEND", "")
    return "tflite_runtime" if wanted in {"tflite_runtime", "tflite-runtime"} else \
        "ai_edge_litert"


def shared_model(name: str) -> Path:
    """A file from ../shared/models, or skip the test when it is absent."""
    path = SHARED_MODELS / name
    if not path.exists():
        pytest.skip(f"../shared/models/{name} is not available")
    return path


@pytest.fixture
def shared() -> Path:
    """The ../shared/models folder, or skip."""
    if not SHARED_MODELS.is_dir():
        pytest.skip("../shared/models is not available")
    return SHARED_MODELS


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real mosquitto on a free 127.0.0.1 port; a missing broker fails under CI."""
    if mosquitto_binary() is None:
        if IN_CI:
            pytest.fail("mosquitto is not installed; .ci/run installs it "
                        "(apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Mosquitto(tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def delegate_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test delegate compiled once per session (skip without gcc; fail under CI)."""
    return compile_delegate(tmp_path_factory.mktemp("delegate") / "edge_test_delegate.so",
                            ci=IN_CI)


@pytest.fixture
def test_delegate(delegate_library: Path, tmp_path: Path) -> Iterator[TestDelegate]:
    """A fresh copy of the test delegate; released (mode ok) at the end so no call hangs on."""
    d = TestDelegate(delegate_library, tmp_path / "delegate")
    try:
        yield d
    finally:
        d.set("ok")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_errors: the test expects logged exceptions")
    config.addinivalue_line("markers", "allow_threads: the test may leave daemon threads")


class _ExceptionRecorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    before = set(threading.enumerate())
    recorder = _ExceptionRecorder()
    logging.getLogger().addHandler(recorder)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(recorder)
    if request.node.get_closest_marker("allow_threads") is None:
        deadline = time.monotonic() + 5.0
        leaked: list[threading.Thread] = []
        while time.monotonic() < deadline:
            leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()
                      and not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]
            if not leaked:
                break
            time.sleep(0.05)
        if leaked:
            pytest.fail(f"test left threads running: {[t.name for t in leaked]}")
    if recorder.records and request.node.get_closest_marker("allow_errors") is None:
        msgs = [f"{r.name}: {r.getMessage()}" for r in recorder.records]
        pytest.fail(f"unexpected logged exceptions: {msgs}")
