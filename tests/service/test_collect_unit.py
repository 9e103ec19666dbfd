"""The collector's systemd unit: valid, and sandboxed (exposure <= 2.0)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO


def test_collect_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if IN_CI:
            pytest.fail("systemd-analyze is missing; ./dev test installs systemd")
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "edge-agent"
    text = (REPO / "systemd/edge-agent-collect@.service").read_text()
    unit = tmp_path / "edge-agent-collect@a.service"
    unit.write_text(text.replace("/opt/edge-agent/venv/bin/edge-agent", str(exe)))
    verify = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert verify.returncode == 0, verify.stderr
    sec = subprocess.run([analyze, "security", "--offline=yes", str(unit)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec.stdout + sec.stderr)
    assert m, sec.stdout + sec.stderr
    assert float(m.group(1)) <= 2.0, sec.stdout
