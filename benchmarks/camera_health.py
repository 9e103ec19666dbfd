"""``python -m benchmarks.camera_health``: camera-health figures for RESILIENCE.md.

* False alarms: the monitor (default thresholds) on 10 minutes of the sample video (looped:
  three scenes with hard cuts, 60 loops) and 10 minutes of the synthetic source (640x480,
  people and shapes, sensor noise), in the clips' own time (10 fps); any event is a false alarm.
* Detection: each generated fault clip (tests/camera_clips.py: covered lens, turned camera,
  blur, darkness, frozen frames at 30 s), the time from onset to the event.
* Cost per check on a 640x480 frame: shrinking it itself vs on the motion gate's small copy
  (the pipeline passes the gate's when the gate is on), as a ratio to the gate's own check of
  the same frame, measured in the same run.

Writes ``--out``/camera_health.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from edge_agent.camera_health import CameraHealthMonitor  # noqa: E402
from edge_agent.config import CameraHealthConfig, MotionConfig, SyntheticSourceConfig  # noqa: E402
from edge_agent.default_models import sample_video_path  # noqa: E402
from edge_agent.motion import MotionGate  # noqa: E402
from edge_agent.sources.synthetic import SyntheticSource  # noqa: E402
from tests.camera_clips import FAULTS, read_clip, write_clip  # noqa: E402

FPS = 10.0


def false_alarms(frames: Any, n: int) -> dict[str, Any]:
    monitor = CameraHealthMonitor(CameraHealthConfig(enabled=True), "bench", live=True)
    events = []
    for i in range(n):
        t = i / FPS
        events.extend((round(t, 1), e.event) for e in monitor.check(frames(i), t, t))
    return {"minutes": round(n / FPS / 60, 1), "checks": monitor.checks,
            "events": events[:20], "false_alarms": len(events)}


def detection(tmp: Path) -> dict[str, Any]:
    out = {}
    for fault, expected in FAULTS.items():
        clip = write_clip(tmp / f"{fault}.avi", fault, onset_s=30.0, fault_s=10.0)
        monitor = CameraHealthMonitor(CameraHealthConfig(enabled=True), "bench", live=True)
        first = None
        for t, image in read_clip(clip):
            for ev in monitor.check(image, t, t):
                if first is None:
                    first = (ev.event, round(t - 30.0, 2))
        out[fault] = {"expected": expected, "got": first and first[0],
                      "after_onset_s": first and first[1]}
    return out


def cost() -> dict[str, Any]:
    scene = SyntheticSource(SyntheticSourceConfig(type="synthetic", width=640, height=480))
    frames = [scene.render(i) for i in range(200)]
    gate = MotionGate(MotionConfig(enabled=True))
    own = CameraHealthMonitor(CameraHealthConfig(enabled=True, interval_s=1e-9), "a")
    shared = CameraHealthMonitor(CameraHealthConfig(enabled=True, interval_s=1e-9), "b")
    t_gate = t_own = t_shared = 0.0
    for rnd in range(3):
        for i, f in enumerate(frames):
            now = rnd * 100 + i * 0.1
            t0 = time.perf_counter()
            gate.check(f, now)
            t1 = time.perf_counter()
            own.check(f, now, now)
            t2 = time.perf_counter()
            shared.check(f, now, now, gate.small)
            t3 = time.perf_counter()
            t_gate += t1 - t0
            t_own += t2 - t1
            t_shared += t3 - t2
    n = 3 * len(frames)
    return {"frame": "640x480", "checks": n,
            "gate_us": round(t_gate / n * 1e6, 1), "own_copy_us": round(t_own / n * 1e6, 1),
            "gate_copy_us": round(t_shared / n * 1e6, 1),
            "own_copy_vs_gate": round(t_own / t_gate, 2),
            "gate_copy_vs_gate": round(t_shared / t_gate, 2),
            "per_frame_at_default_interval": "one check per 0.2 s: at 10 fps, 1 frame in 2"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.camera_health", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "resilience")
    args = ap.parse_args(argv)
    n = int(args.minutes * 60 * FPS)
    sample = [img for _, img in read_clip(sample_video_path())]
    scene = SyntheticSource(SyntheticSourceConfig(type="synthetic", width=640, height=480))
    report: dict[str, Any] = {"thresholds": CameraHealthConfig(enabled=True).model_dump()}
    report["sample_video"] = false_alarms(lambda i: sample[i % len(sample)], n)
    report["synthetic"] = false_alarms(scene.render, n)
    with tempfile.TemporaryDirectory() as tmp:
        report["detection"] = detection(Path(tmp))
    report["cost"] = cost()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "camera_health.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = (report["sample_video"]["false_alarms"] == 0 and report["synthetic"]["false_alarms"] == 0
          and all(d["got"] == d["expected"] and d["after_onset_s"] is not None
                  and 0 <= d["after_onset_s"] <= 2.0 for d in report["detection"].values()))
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
