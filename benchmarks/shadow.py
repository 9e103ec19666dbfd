"""Active-model throughput with a shadow candidate beside it, as ratios in one run.

The real :class:`~edge_agent.pipeline.Pipeline` runs the default face detector (short range)
on a looped clip as fast as it can (source fps 0) with a counting sink; three variants are
interleaved round by round: no shadow, a shadow (the full-range face detector, its own
interpreter, one thread, nice 19) on every 5th frame, and a shadow ``when idle``. The figure
is the active pipeline's results per second of each variant over the no-shadow run of the
same round (median, min and max over the rounds), and the shadow's own counters.

Run: ``python -m benchmarks.shadow [--rounds N] [--frames N]``. On a shared, loaded machine
the per-round ratios spread; the median is what to read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ResultCounter,
    dump,
    interleave,
    machine,
    pipeline_config,
    ratio,
    steady_rate,
    workdir,
    write_video,
)


def measure(rounds: int, frames: int, clip: Path) -> dict[str, Any]:
    from edge_agent.bundle import load_bundle
    from edge_agent.default_models import ensure_default_models, labels_path
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.shadow import ShadowRunner
    from edge_agent.sources.factory import create_source

    models = ensure_default_models()
    active_path = models["face_detection_short_range"]
    cand_path = models["face_detection_full_range_sparse"]
    labels = labels_path("face_detection_short_range")
    source = {"type": "video", "uri": str(clip), "fps": 0, "loop": True}
    pcfg = pipeline_config(active_path, labels, source, threads=2)
    ccfg = pipeline_config(cand_path, labels, source, threads=1)
    bundle = load_bundle(pcfg.model, pcfg.score_threshold)
    seal = new_seal()
    counters: dict[str, list[dict[str, int]]] = {"every5": [], "when_idle": []}

    def run(mode: str | None) -> float:
        policy = PrivacyPolicy(pcfg.privacy, pcfg.name, "bench", seal)
        counter = ResultCounter(lambda _m: True, frames + 2)
        pipe = Pipeline(pcfg, bundle, source_factory=create_source, policy=policy,
                        send=counter.send)
        runner = None
        if mode is not None:
            cand = load_bundle(ccfg.model, ccfg.score_threshold)
            runner = ShadowRunner("bench", cand, bundle, every=5 if mode == "every5" else 1,
                                  when_idle=mode == "when_idle", report_s=3600)
            runner.start()
            pipe.shadow = runner
        pipe.start()
        counter.done.wait(600)
        pipe.stop()
        if runner is not None:
            runner.stop()
            counters[mode or ""].append({**runner.counters(),
                                         "compared": runner.agreement.frames})
        return steady_rate(counter.times)

    rates = interleave({"none": lambda: run(None), "every5": lambda: run("every5"),
                        "when_idle": lambda: run("when_idle")}, rounds)
    bundle.close()
    return {
        "active": active_path.name, "candidate": cand_path.name, "frames_per_run": frames,
        "rounds": rounds, "fps": {k: round(sorted(v)[len(v) // 2], 2) for k, v in rates.items()},
        "every5_over_none": ratio(rates["every5"], rates["none"]),
        "when_idle_over_none": ratio(rates["when_idle"], rates["none"]),
        "shadow_counters": counters, "machine": machine(), "load": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    with workdir() as wd:
        clip = write_video(wd / "clip.avi")
        print(dump(measure(args.rounds, args.frames, clip)))


if __name__ == "__main__":
    main()
