"""Motion gating: CPU seconds on a mostly static clip with the gate on / off.

The clip comes from :func:`edge_agent.sources.synthetic.write_clip`, which returns the motion
episodes as frame ranges (the ground truth). Three runs process the whole clip unpaced (every
frame, in order) through the same pipeline and egress: the gate off; the gate on, measuring a
DCT-scaled decode of each MJPEG packet and decoding in full only what it lets through (what
the pipeline does); and the gate on with every frame decoded in full first (the pipeline
before deferred decoding, kept as the baseline). Two more runs take the same frames as a raw
YUYV camera hands them over (:class:`_RawCameraSource`): gate off and gate on, the gate
measuring a subsampled copy of the planes. They alternate over ``rounds`` rounds; the CPU
seconds of the process are compared per round (raw gate on against raw gate off), and every
episode must have at least one published result inside its frame range when the gate is on.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Egress, pipeline_config

# seconds: 6 of 120 s move (5%), three episodes of different lengths and objects
EPISODES = ((20.0, 22.0), (55.0, 57.5), (90.0, 91.5))
CLIP_S = 120.0
FPS = 10.0


class _DecodingSource:
    """A source without ``defer_decode``: the pipeline gets every frame decoded in full."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    live = property(lambda self: self._inner.live)
    bad_lines = property(lambda self: self._inner.bad_lines)
    dropped = property(lambda self: self._inner.dropped)

    def open(self) -> None:
        self._inner.open()

    def read(self, timeout: float) -> Any:
        return self._inner.read(timeout)

    def close(self) -> None:
        self._inner.close()


class _RawCameraSource:
    """The clip's frames as a YUYV camera delivers them, undecoded.

    Each frame's buffer is read from a file of raw YUYV frames (converted from the clip once,
    before any measured run) into a new array, the copy OpenCV makes of a V4L2 buffer, and
    handed over as an ``EncodedImage`` the way ``OpencvCameraSource`` hands over a V4L2
    camera's YUYV buffers (``tests/sources/test_v4l2_device.py`` runs that on a real driver).
    Unpaced, every frame in order, like the clip runs.
    """

    live = False
    bad_lines = 0
    dropped = 0
    defer_decode = True

    def __init__(self, path: Path, width: int, height: int) -> None:
        self._path = path
        self._size = (width, height)
        self._file: Any = None
        self._index = 0

    def open(self) -> None:
        self._file = self._path.open("rb", buffering=0)
        self._index = 0

    def read(self, timeout: float) -> Any:
        import numpy as np

        from edge_agent.sources.encoded import EncodedImage
        from edge_agent.types import Frame

        width, height = self._size
        buffer = np.empty(width * height * 2, np.uint8)
        if self._file is None or self._file.readinto(buffer) != buffer.size:
            raise EOFError
        frame = Frame(index=self._index, ts=time.time(),
                      encoded=EncodedImage.yuyv(buffer, width, height))
        self._index += 1
        return frame

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def write_raw_frames(clip: Path, dest: Path) -> tuple[int, int]:
    """Every frame of ``clip`` as raw YUYV (BT.601, as cameras send it) into ``dest``, once;
    the frame size."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    if not dest.exists():
        part = dest.with_suffix(".part")
        with part.open("wb") as out:
            while True:
                ok, image = cap.read()
                if not ok:
                    break
                out.write(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_YUYV).tobytes())
        part.rename(dest)
    cap.release()
    return size


def _run(model: Path, labels: Path | None, clip: Path, egress: Egress | None, *,
         gated: bool, threads: int, defer: bool = True,
         raw: tuple[Path, int, int] | None = None
         ) -> tuple[float, float, list[int], dict[str, Any]]:
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

    def factory(cfg: Any) -> Any:
        if raw is not None:
            return _RawCameraSource(*raw)
        return create_source(cfg) if defer else _DecodingSource(create_source(cfg))

    pipe = Pipeline(pcfg, bundle, source_factory=factory,
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


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure(model: Path, labels: Path | None, work: Path, egress: Egress | None, *,
            threads: int = 2, rounds: int = 2) -> dict[str, Any]:
    """CPU with the gate / without on the same clip, and whether every episode was reported.

    Three runs per round, alternating: gate off, gate on (deferred decode), gate on with full
    decodes (the earlier pipeline). Ratios are per round; the median is reported with the
    lowest and highest round.
    """
    from edge_agent.sources.synthetic import write_clip

    clip = work / "static.avi"
    if not clip.exists():
        truth = write_clip(clip, seconds=CLIP_S, fps=FPS, episodes=EPISODES, seed=3)
        (work / "static.truth").write_text(repr(truth))
    truth = eval((work / "static.truth").read_text())  # our own repr of tuples
    raw = (work / "static.yuyv", *write_raw_frames(clip, work / "static.yuyv"))
    cpu: dict[str, list[float]] = {"gate_off": [], "gate_on": [], "gate_on_full_decode": [],
                                   "raw_gate_off": [], "raw_gate_on": []}
    wall: dict[str, list[float]] = {k: [] for k in cpu}
    ratios: dict[str, list[float]] = {"gate_on": [], "gate_on_full_decode": [],
                                      "raw_gate_on": []}
    missed_any: set[tuple[int, int]] = set()
    raw_missed: set[tuple[int, int]] = set()
    st: dict[str, dict[str, Any]] = {}
    off_idx: list[int] = []
    # in this order each round; a gated run's ratio is against the ungated run of its kind
    runs: tuple[tuple[str, dict[str, Any]], ...] = (
        ("gate_off", {"gated": False}), ("gate_on", {"gated": True}),
        ("gate_on_full_decode", {"gated": True, "defer": False}),
        ("raw_gate_off", {"gated": False, "raw": raw}),
        ("raw_gate_on", {"gated": True, "raw": raw}))
    baseline = {"gate_on": "gate_off", "gate_on_full_decode": "gate_off",
                "raw_gate_on": "raw_gate_off"}
    for _ in range(rounds):
        for key, options in runs:
            c, w, idx, st[key] = _run(model, labels, clip, egress, threads=threads, **options)
            cpu[key].append(c)
            wall[key].append(w)
            if key == "gate_off":
                off_idx = idx
            if key in baseline:
                off = cpu[baseline[key]][-1]
                ratios[key].append(c / off if off else float("nan"))
                published = set(idx)
                unreported = {(a, b) for a, b in truth
                              if not any(a <= i <= b for i in published)}
                if key == "raw_gate_on":
                    raw_missed |= unreported
                else:
                    missed_any |= unreported
    moving = sum(b - a + 1 for a, b in truth)
    missed = sorted(missed_any)

    def spread(xs: list[float]) -> dict[str, float]:
        return {"median": round(_median(xs), 3), "min": round(min(xs), 3),
                "max": round(max(xs), 3)}

    return {
        "model": model.name, "threads": threads, "rounds": rounds,
        "clip": f"{CLIP_S:g} s at {FPS:g} fps, 640x480 MJPEG, {len(truth)} motion episodes "
                f"({moving} of {int(CLIP_S * FPS)} frames move)",
        "episodes": [list(e) for e in truth],
        "cpu_s": {k: round(_median(v), 2) for k, v in cpu.items()},
        "wall_s": {k: round(_median(v), 2) for k, v in wall.items()},
        "cpu_ratio": round(_median(ratios["gate_on"]), 3),
        "cpu_ratio_rounds": spread(ratios["gate_on"]),
        "cpu_ratio_full_decode": round(_median(ratios["gate_on_full_decode"]), 3),
        "cpu_ratio_full_decode_rounds": spread(ratios["gate_on_full_decode"]),
        # a perfect gate infers only the moving frames; decoding every frame is still paid
        "moving_fraction": round(moving / (CLIP_S * FPS), 3),
        "inferred": {"gate_off": st["gate_off"]["inferred"],
                     "gate_on": st["gate_on"]["inferred"],
                     "gate_on_full_decode": st["gate_on_full_decode"]["inferred"]},
        "gated_frames": st["gate_on"]["gated"],
        # the same frames from a raw YUYV camera: gate on / off, both on raw frames
        "raw": {"cpu_ratio": round(_median(ratios["raw_gate_on"]), 3),
                "cpu_ratio_rounds": spread(ratios["raw_gate_on"]),
                "inferred": {"gate_off": st["raw_gate_off"]["inferred"],
                             "gate_on": st["raw_gate_on"]["inferred"]},
                "episodes_reported": len(truth) - len(raw_missed),
                "episodes_missed": [list(e) for e in sorted(raw_missed)]},
        "episodes_reported": len(truth) - len(missed),
        "episodes_missed": [list(e) for e in missed],
        "frames_off": len(off_idx),
    }
