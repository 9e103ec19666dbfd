"""The systemd unit: `systemd-analyze verify` passes and the sandbox exposure is <= 2.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO

UNIT = REPO / "systemd" / "edge-agent.service"
MAX_EXPOSURE = 2.0


def _analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        if IN_CI:
            pytest.fail("systemd-analyze is missing; ./dev test installs Debian's systemd")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return exe


def _unit_with_exec(tmp_path: Path, exec_start: str) -> Path:
    """A copy of the unit whose ExecStart names an existing binary (verify checks it)."""
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={exec_start}", UNIT.read_text(),
                  flags=re.MULTILINE)
    out = tmp_path / "edge-agent.service"
    out.write_text(text)
    return out


def exposure(unit: Path, cwd: Path) -> float:
    """The overall exposure `systemd-analyze security --offline=yes` gives ``unit``."""
    proc = subprocess.run([_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, cwd=cwd, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert m, proc.stdout + proc.stderr
    return float(m.group(1))


def test_exposure_at_most_2(tmp_path: Path) -> None:
    score = exposure(UNIT, tmp_path)
    assert score <= MAX_EXPOSURE, f"exposure {score} > {MAX_EXPOSURE}"


def test_verify_passes(tmp_path: Path) -> None:
    unit = _unit_with_exec(tmp_path, shutil.which("true") or "/bin/true")
    proc = subprocess.run([_analyze(), "verify", str(unit)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "edge-agent.service" not in proc.stderr, proc.stderr


def test_contract_directives() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
                 "RestartPreventExitStatus=78", "ExecReload=/bin/kill -HUP $MAINPID",
                 "ExecStart=/opt/edge-agent/venv/bin/edge-agent run -c /etc/edge-agent/config.yaml",
                 "StateDirectory=edge-agent", "ConfigurationDirectory=edge-agent",
                 "DevicePolicy=closed", "DeviceAllow=char-video4linux rw",
                 "MemoryDenyWriteExecute=yes", "CapabilityBoundingSet=", "UMask=0077",
                 # resource limits (issue 12): a flood or a leak is bounded by the kernel too
                 "LimitNOFILE=4096", "TasksMax=256", "MemoryMax=1536M"):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line


def test_loosening_a_directive_is_seen(tmp_path: Path) -> None:
    """The score reacts to the sandbox: dropping it makes the exposure worse."""
    loose = tmp_path / "edge-agent.service"
    loose.write_text("\n".join(line for line in UNIT.read_text().splitlines()
                               if not line.startswith(("SystemCallFilter", "ProtectSystem",
                                                       "RestrictAddressFamilies"))))
    assert exposure(loose, tmp_path) > exposure(UNIT, tmp_path)
