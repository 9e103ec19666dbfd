"""Shared fixtures: real broker, real models (skipped cleanly when ../shared is absent),
and autouse guards that fail a test which leaves a thread running or logs an unexpected
exception."""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def missing(what: str) -> None:
    """Skip because ``what`` (a tool the repo's ./dev installs) is absent; fail under CI."""
    if IN_CI:
        pytest.fail(f"{what} is missing under CI (./dev test installs it)")
    pytest.skip(f"{what} is not installed")


def need_module(name: str) -> Any:
    """Import a third-party module the ``dev`` extra installs; skip without it (fail under CI).
    Never for edge_agent's own modules: those are imported plainly, so a broken one fails."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"python module {name} (pip install -e '.[dev]')")
        raise


def _missing_shared(what: str) -> None:
    """Skip on a clone without ../shared; under CI (where ../shared is a read-only copy of the
    team's models) a missing file is a failure, never a silent skip."""
    if IN_CI:
        pytest.fail(f"{what} is missing under CI (CI provides ../shared/models read-only)")
    pytest.skip(f"{what} is not available (see README: Contributing: tests and ../shared)")


def shared_model(name: str) -> Path:
    """A model or data file the tests use.

    The three default models (and their label files) come from models/, which
    ``edge-agent models fetch`` fills on every clone; everything else comes from
    ../shared/models and skips cleanly when that folder is absent (fails under CI).
    """
    from edge_agent.default_models import DEFAULT_MODELS, default_models_dir, ensure_default_models

    stem = name[:-len(".tflite")] if name.endswith(".tflite") else None
    if stem in DEFAULT_MODELS:
        return ensure_default_models()[stem]
    if name in {m.labels for m in DEFAULT_MODELS.values()}:
        return default_models_dir() / name
    path = SHARED_MODELS / name
    if not path.exists():
        _missing_shared(f"../shared/models/{name}")
    return path


@pytest.fixture
def shared() -> Path:
    """The ../shared/models folder, or skip (a failure under CI)."""
    if not SHARED_MODELS.is_dir():
        _missing_shared("../shared/models")
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
