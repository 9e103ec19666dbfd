"""Motion gating: CPU seconds on a mostly static clip with the gate on / off.

The clip comes from :func:`edge_agent.sources.synthetic.write_clip`, which returns the motion
episodes as frame ranges (the ground truth). Both runs process the whole clip unpaced (every
frame, in order) through the same pipeline and egress; the CPU seconds of the process are
compared, and every episode must have at least one published result inside its frame range
when the gate is on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.common import Egress, pipeline_config

# seconds: 6 of 120 s move (5%), three episodes of different lengths and objects
EPISODES = ((20.0, 22.0), (55.0, 57.5), (90.0, 91.5))
CLIP_S = 120.0
FPS = 10.0


def _run(model: Path, labels: Path | None, clip: Path, egress: Egress | None, *,
         gated: bool, threads: int) -> tuple[float, float, list[int], dict[str, Any]]:
    from edge_agent.bundle import load_bundle
    from edge_agent.motion import MotionGate
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.factory import create_source

    pcfg = pipeline_config(model, labels, {"type": "video", "uri": str(clip), "fps": 0},
                           threads=threads, motion={"enabled": gated})
    bundle = load_bundle(pcfg.model, pcfg.score_threshold)
    seal = egress.seal if egress is not None else new_seal()
    indices: list[int] = []

    def send(msg: Any) -> bool:
        if msg.kind == "result":
            indices.append(int(msg.payload["frame"]["index"]))
        return egress.guard.send(msg) if egress is not None else True

    gate = MotionGate(pcfg.motion) if gated else None
    pipe = Pipeline(pcfg, bundle, source_factory=create_source,
                    policy=PrivacyPolicy(pcfg.privacy, pcfg.name, "bench", seal), send=send,
                    gate=gate)
    c, t = time.process_time(), time.perf_counter()
    pipe.start()
    pipe.join(3600)
    pipe.stop()
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    st = pipe.status()
    bundle.close()
    return cpu, wall, indices, st


def measure(model: Path, labels: Path | None, work: Path, egress: Egress | None, *,
            threads: int = 2) -> dict[str, Any]:
    """CPU with the gate / without on the same clip, and whether every episode was reported."""
    from edge_agent.sources.synthetic import write_clip

    clip = work / "static.avi"
    if not clip.exists():
        truth = write_clip(clip, seconds=CLIP_S, fps=FPS, episodes=EPISODES, seed=3)
        (work / "static.truth").write_text(repr(truth))
    truth = eval((work / "static.truth").read_text())  # our own repr of tuples
    off_cpu, off_wall, off_idx, off_st = _run(model, labels, clip, egress, gated=False,
                                              threads=threads)
    on_cpu, on_wall, on_idx, on_st = _run(model, labels, clip, egress, gated=True,
                                          threads=threads)
    published = set(on_idx)
    missed = [(a, b) for a, b in truth if not any(a <= i <= b for i in published)]
    moving = sum(b - a + 1 for a, b in truth)
    return {
        "model": model.name, "threads": threads,
        "clip": f"{CLIP_S:g} s at {FPS:g} fps, 640x480 MJPEG, {len(truth)} motion episodes "
                f"({moving} of {int(CLIP_S * FPS)} frames move)",
        "episodes": [list(e) for e in truth],
        "cpu_s": {"gate_off": round(off_cpu, 2), "gate_on": round(on_cpu, 2)},
        "wall_s": {"gate_off": round(off_wall, 2), "gate_on": round(on_wall, 2)},
        "cpu_ratio": round(on_cpu / off_cpu, 3) if off_cpu else None,
        # a perfect gate infers only the moving frames; decoding every frame is still paid
        "moving_fraction": round(moving / (CLIP_S * FPS), 3),
        "inferred": {"gate_off": off_st["inferred"], "gate_on": on_st["inferred"]},
        "gated_frames": on_st["gated"],
        "episodes_reported": len(truth) - len(missed),
        "episodes_missed": [list(e) for e in missed],
        "frames_off": len(off_idx),
    }
