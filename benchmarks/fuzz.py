"""``python -m benchmarks.fuzz [--cases N]`` (``./dev fuzz``): the fuzz tests with N cases per
target (default 4,000: config loader, command dispatcher, manifest parser; 12,000 in all).

Runs ``tests/fuzz`` under pytest with ``EDGE_AGENT_FUZZ_EXAMPLES`` set, and writes the cases
run per target and the outcome to ``--out``/fuzz.json (RESILIENCE.md). Exit 0 when every case
ended in an accepted input or a clear error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    ap.add_argument("--cases", type=int, default=4000, help="cases per target")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "resilience")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge-fuzz-") as tmp:
        report = Path(tmp) / "counts.json"
        env = dict(os.environ, EDGE_AGENT_FUZZ_EXAMPLES=str(args.cases),
                   EDGE_AGENT_FUZZ_REPORT=str(report), EDGE_AGENT_FUZZ_TMP=tmp)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-o", "timeout=0", "tests/fuzz"], cwd=REPO, env=env, check=False)
        counts = json.loads(report.read_text()) if report.exists() else {}
    summary = {"cases_per_target": args.cases, "cases": counts, "total": sum(counts.values()),
               "failures": 0 if done.returncode == 0 else "see the pytest output",
               "minutes": round((time.monotonic() - t0) / 60, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
