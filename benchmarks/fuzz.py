"""``python -m benchmarks.fuzz [--cases N]`` (``./dev fuzz``): the fuzz tests with N cases per
target (default 4,000: config loader, command dispatcher, manifest parser; 12,000 in all).

Runs ``tests/fuzz`` under pytest with ``EDGE_AGENT_FUZZ_EXAMPLES`` set, and writes the cases
run per target and the outcome to ``--out``/fuzz.json (RESILIENCE.md). Exit 0 when every case
ended in an accepted input or a clear error.

``--atheris N`` also runs the coverage-guided atheris targets (:mod:`tests.fuzz.atheris_run`:
config loader, manifest parser) for N inputs each and writes ``--out``/atheris.json
(``./dev fuzz --atheris N`` installs atheris's wheel first; ``--cases 0`` skips hypothesis).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    ap.add_argument("--cases", type=int, default=4000,
                    help="hypothesis cases per target (0: only the atheris run)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "resilience")
    ap.add_argument("--atheris", type=int, default=0, metavar="N",
                    help="also run the atheris targets for N inputs each (0: not)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    code = 0
    if args.cases > 0:
        code = hypothesis_run(args.cases, args.out)
    if args.atheris > 0:
        t0 = time.monotonic()
        summary = {"inputs_per_target": args.atheris,
                   "targets": {t: atheris_run(t, args.atheris) for t in ("config", "manifest")}}
        summary["minutes"] = round((time.monotonic() - t0) / 60, 1)
        (args.out / "atheris.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary, indent=2))
        if any(r["exit_code"] != 0 for r in summary["targets"].values()):
            code = code or 1
    return code


def hypothesis_run(cases: int, out: Path) -> int:
    """``tests/fuzz`` with ``cases`` per target; the counts go to ``out``/fuzz.json."""
    with tempfile.TemporaryDirectory(prefix="edge-fuzz-") as tmp:
        report = Path(tmp) / "counts.json"
        env = dict(os.environ, EDGE_AGENT_FUZZ_EXAMPLES=str(cases),
                   EDGE_AGENT_FUZZ_REPORT=str(report), EDGE_AGENT_FUZZ_TMP=tmp)
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-o", "timeout=0", "tests/fuzz"], cwd=REPO, env=env, check=False)
        counts = json.loads(report.read_text()) if report.exists() else {}
    summary = {"cases_per_target": cases, "cases": counts, "total": sum(counts.values()),
               "failures": 0 if done.returncode == 0 else "see the pytest output",
               "minutes": round((time.monotonic() - t0) / 60, 1)}
    (out / "fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return done.returncode


def atheris_run(target: str, runs: int) -> dict[str, object]:
    """One atheris target for ``runs`` inputs: inputs run, seconds, edges covered, exit code."""
    with tempfile.TemporaryDirectory(prefix=f"edge-atheris-{target}-") as corpus:
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "tests.fuzz.atheris_run", target, corpus,
                               f"-runs={runs}", "-seed=18"], cwd=REPO, capture_output=True,
                              text=True, check=False)
        seconds = time.monotonic() - t0
        corpus_files = len(os.listdir(corpus))
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
    ran = re.search(r"Done (\d+) runs", done.stderr)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", done.stderr)
    return {"runs": int(ran.group(1)) if ran else 0, "seconds": round(seconds, 1),
            "edges": int(cov[-1][0]) if cov else None,
            "features": int(cov[-1][1]) if cov else None, "corpus": corpus_files,
            "exit_code": done.returncode}


if __name__ == "__main__":
    sys.exit(main())
