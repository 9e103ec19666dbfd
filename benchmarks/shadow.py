"""Active-model throughput with a shadow candidate beside it, as ratios in one run.

The real :class:`~edge_agent.pipeline.Pipeline` runs the active model on a looped synthetic
640x480 clip with a counting sink, in three variants interleaved round by round: no shadow, a
shadow on every 5th frame, and a shadow ``when idle`` (only in the pipeline's idle time: see
:mod:`edge_agent.shadow_headroom`). Two source paces:

* ``flat out`` (source fps 0): the active pipeline takes frames as fast as it can, so there is
  no idle time; ``when idle`` should then give the candidate (almost) no frames.
* ``paced``: a camera-like source at ``--pace`` (default 0.6) of the active model's flat-out
  rate measured at the start of the run; the idle time between frames is the candidate's.

Models: the TF2 SSD MobileNet v2 320 (float) active and the COCO SSD MobileNet v1 (int8)
candidate from ../shared/models when present (``--models coco``), else the default face
detectors (short range active, full range candidate; ``--models face``). Both interpreters
have the same thread count (``--threads``, default 2). Figures: the active pipeline's results/s
per run (median over rounds), each variant's rate over the no-shadow run of the same round
(median, min..max), the active model's invoke p50/p95 (ms), and the shadow's counters (how
many frames the candidate compared).

Run: ``python -m benchmarks.shadow [--rounds N] [--seconds S] [--pace F]`` (on a shared
machine, with ``nice -n -10`` so other sessions' nice-5 jobs do not decide the figure).
"""

from __future__ import annotations

import argparse
import os
import statistics
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ResultCounter,
    dump,
    interleave,
    machine,
    pipeline_config,
    ratio,
    shared_model,
    steady_rate,
    workdir,
    write_video,
)

VARIANTS = ("none", "every5", "when_idle")


def _models(which: str) -> tuple[Path, Path, Path | None, str]:
    from edge_agent.default_models import ensure_default_models, labels_path

    if which in ("auto", "coco"):
        tf2 = shared_model("tf2_ssd_mobilenet_v2_320_coco_float.tflite")
        coco = shared_model("coco_ssd_mobilenet_v1_1.0_quant.tflite")
        labels = shared_model("coco_labels.txt")
        if tf2 is not None and coco is not None:
            return tf2, coco, labels, "coco"
        if which == "coco":
            raise SystemExit("--models coco: the COCO models are not in ../shared/models")
    models = ensure_default_models()
    return (models["face_detection_short_range"],
            models["face_detection_full_range_sparse"],
            labels_path("face_detection_short_range"), "face")


def measure(rounds: int, seconds: float, pace: float, threads: int, clip: Path,
            which: str) -> dict[str, Any]:
    from edge_agent.bundle import load_bundle
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.shadow import ShadowRunner
    from edge_agent.sources.factory import create_source

    active_path, cand_path, labels, kind = _models(which)
    seal = new_seal()

    def run(fps: float, mode: str | None, frames: int,
            sink: dict[str, list[dict[str, Any]]]) -> float:
        source = {"type": "video", "uri": str(clip), "fps": fps, "loop": True}
        pcfg = pipeline_config(active_path, labels, source, threads=threads)
        bundle = load_bundle(pcfg.model, pcfg.score_threshold)
        policy = PrivacyPolicy(pcfg.privacy, pcfg.name, "bench", seal)
        counter = ResultCounter(lambda _m: True, frames + 2)
        pipe = Pipeline(pcfg, bundle, source_factory=create_source, policy=policy,
                        send=counter.send)
        runner = None
        if mode is not None:
            ccfg = pipeline_config(cand_path, labels, source, threads=threads)
            runner = ShadowRunner("bench", lambda: load_bundle(ccfg.model,
                                                               ccfg.score_threshold),
                                  bundle, every=5 if mode == "every5" else 1,
                                  when_idle=mode == "when_idle", report_s=3600)
            runner.start()
            pipe.shadow = runner
        pipe.start()
        counter.done.wait(600)
        pipe.stop()
        invoke = sorted(pipe.stats.inference_ms)
        row: dict[str, Any] = {
            "fps": round(steady_rate(counter.times), 2),
            "invoke_ms_p50": round(statistics.median(invoke), 2) if invoke else None,
            "invoke_ms_p95": round(invoke[int(0.95 * (len(invoke) - 1))], 2) if invoke
            else None}
        if runner is not None:
            runner.stop()
            row.update(runner.counters(), compared=runner.agreement.frames,
                       candidate_ms_p50=runner.agreement.figures()["latency_ms"]["candidate"]
                       ["p50"], priority=runner.priority)
        bundle.close()
        sink[mode or "none"].append(row)
        return float(row["fps"])

    # the active model's flat-out rate sets the paced source's fps
    probe: dict[str, list[dict[str, Any]]] = {"none": []}
    flat_fps = statistics.median(run(0, None, 60, probe) for _ in range(3))
    paced_fps = round(flat_fps * pace, 1)
    out: dict[str, Any] = {"active": active_path.name, "candidate": cand_path.name,
                           "threads": threads, "rounds": rounds, "seconds_per_run": seconds,
                           "flat_out_probe_fps": round(flat_fps, 2), "paced_fps": paced_fps,
                           "models": kind, "load_start": os.getloadavg()}
    for name, fps in (("paced", paced_fps), ("flat_out", 0.0)):
        frames = max(30, int(seconds * (fps or flat_fps)))
        rows: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        rates = interleave({v: partial(run, fps, None if v == "none" else v, frames, rows)
                            for v in VARIANTS}, rounds)
        out[name] = {
            "source_fps": fps, "frames_per_run": frames,
            "fps_median": {k: round(statistics.median(v), 2) for k, v in rates.items()},
            "every5_over_none": ratio(rates["every5"], rates["none"]),
            "when_idle_over_none": ratio(rates["when_idle"], rates["none"]),
            "runs": rows,
        }
    out["load_end"] = os.getloadavg()
    out["machine"] = machine()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    ap.add_argument("--pace", type=float, default=0.6,
                    help="paced source fps as a fraction of the active model's flat-out rate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", choices=("auto", "coco", "face"), default="auto")
    args = ap.parse_args()
    with workdir() as wd:
        clip = write_video(wd / "clip.avi")
        print(dump(measure(args.rounds, args.seconds, args.pace, args.threads, clip,
                           args.models)))


if __name__ == "__main__":
    main()
