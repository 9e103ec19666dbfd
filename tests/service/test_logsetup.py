"""Log formats: journald priority prefixes without timestamps, text, JSON lines."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config import LoggingConfig
from edge_agent.logsetup import resolve_format, setup_logging, under_journald


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _log_through(cfg: LoggingConfig, env: dict[str, str]) -> str:
    buf = io.StringIO()
    setup_logging(cfg, stream=buf, env=env)
    log = logging.getLogger("edge_agent.test")
    log.info("started %d pipelines", 2)
    log.warning("slow")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    return buf.getvalue()


@pytest.mark.allow_errors
@pytest.mark.usefixtures("restore_root")
def test_journald_lines_have_priorities_and_no_timestamp() -> None:
    out = _log_through(LoggingConfig(format="journald"), {})
    lines = out.splitlines()
    assert lines[0] == "<6>edge_agent.test: started 2 pipelines"
    assert lines[1] == "<4>edge_agent.test: slow"
    assert lines[2] == "<3>edge_agent.test: failed"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines[3:])  # traceback
    assert "ValueError: bad" in out


@pytest.mark.allow_errors
@pytest.mark.usefixtures("restore_root")
def test_json_lines() -> None:
    out = _log_through(LoggingConfig(format="json"), {})
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["level"] for d in docs] == ["info", "warning", "error"]
    assert docs[0]["msg"] == "started 2 pipelines"
    assert docs[0]["logger"] == "edge_agent.test"
    assert docs[0]["ts"].endswith("Z")
    assert "ValueError: bad" in docs[2]["exc"]


@pytest.mark.allow_errors
@pytest.mark.usefixtures("restore_root")
def test_text_has_timestamps_and_level_applies() -> None:
    out = _log_through(LoggingConfig(format="text", level="warning"), {})
    lines = out.splitlines()
    assert "started" not in out
    assert lines[0].split()[2] == "WARNING"
    assert lines[0][:4].isdigit()


@pytest.mark.usefixtures("restore_root")
def test_setup_twice_replaces_its_own_handler() -> None:
    a = setup_logging(LoggingConfig(format="text"), stream=io.StringIO(), env={})
    b = setup_logging(LoggingConfig(format="json"), stream=io.StringIO(), env={})
    root = logging.getLogger().handlers
    assert b in root and a not in root


def test_auto_picks_journald_only_for_the_real_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert under_journald(f, env)
        assert resolve_format(LoggingConfig(), f, env) == "journald"
        assert not under_journald(f, {"JOURNAL_STREAM": "1:2"})
        assert resolve_format(LoggingConfig(), f, {}) == "text"
        assert resolve_format(LoggingConfig(format="json"), f, env) == "json"


def test_refused_config_lines_carry_err_priority_under_journald(tmp_path: Path) -> None:
    # found under a real systemd: without a prefix journald files stderr lines as info
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("pipelines:\n  - name: Bad Name!\n")
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        code = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", "-c",
                               str(bad), "--no-preflight"], stderr=f, env=env,
                              check=False).returncode
    assert code == 78
    lines = err.read_text().splitlines()
    assert lines and all(line.startswith("<3>") for line in lines), lines
    plain = subprocess.run([sys.executable, "-m", "edge_agent", "check-config", "-c", str(bad),
                            "--no-preflight"], capture_output=True, text=True, check=False,
                           env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    assert plain.returncode == 78 and not plain.stderr.startswith("<")
