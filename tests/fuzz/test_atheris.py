"""The atheris targets (:mod:`tests.fuzz.atheris_run`) for a short run each: libFuzzer exits 0
only when no input crashed. Skipped where atheris is not installed (it is not in the dev
extra: binary wheels exist only for some Python versions; ``./dev fuzz --atheris`` installs
it and runs the long version, RESILIENCE.md)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.agentproc import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (./dev fuzz --atheris installs its wheel where one exists)")


@pytest.mark.parametrize("target", ["config", "manifest"])
def test_atheris_target_survives_a_short_run(target: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_run", target, str(tmp_path / "corpus"),
         "-runs=1000", "-max_total_time=60", "-seed=18"],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = re.search(r"Done (\d+) runs", done.stderr)
    assert runs is not None and int(runs.group(1)) >= 1000, done.stderr[-2000:]
