"""Where a pipeline's CPU goes: ``python -m benchmarks.cpu_split`` (not part of ``./dev bench``).

Three diagnostics behind the issue 20 figures in BENCHMARKS.md, each printed and, with
``--json``, written out:

* ``threads``: CPU per published result by thread of a running pipeline (the generated
  640x480 MJPEG clip, looped and unpaced, through the real egress to a local mosquitto),
  read from /proc/self/task over a window that starts ``settle`` seconds after the start.
  Python threads are named; the interpreter's own worker threads are native and show as
  ``native``.
* ``gaps``: CPU per invoke of the bare interpreter when the caller pauses between invokes
  (sleeping, as a pipeline waits for its next frame). If the interpreter's workers spun while
  the caller is away, the CPU per invoke would grow by the pause.
* ``idle``: CPU per still frame of the gated paths, piece by piece: a raw YUYV buffer's copy
  (what OpenCV does with a V4L2 buffer), the gate's reduced copy of it, the 1/4 DCT-scaled
  decode of the clip's MJPEG packet, and the gate's check.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    default_model,
    local_egress,
    pipeline_config,
    shared_model,
    workdir,
    write_video,
)

_TICK = os.sysconf("SC_CLK_TCK")


def _task_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, summed by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        name = names.get(int(tid), "native")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


def threads(model: Path, n_threads: int, work: Path, *, settle: float = 8.0,
            window: float = 10.0) -> dict[str, Any]:
    """ms of CPU per published result, by thread, in a pipeline on the looped clip."""
    from edge_agent.bundle import load_bundle
    from edge_agent.pipeline import DEFAULT_TUNING, Pipeline, apply_process_tuning
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.factory import create_source

    apply_process_tuning(DEFAULT_TUNING)
    clip = write_video(work / "clip.avi")
    pcfg = pipeline_config(model, None, {"type": "video", "uri": str(clip), "fps": 0,
                                         "loop": True}, threads=n_threads)
    with local_egress(work) as egress:
        if egress is None:
            raise SystemExit("cpu_split threads: needs mosquitto (the real egress)")
        bundle = load_bundle(pcfg.model, pcfg.score_threshold)
        results = [0]

        def send(msg: Any) -> bool:
            ok = bool(egress.guard.send(msg))
            results[0] += msg.kind == "result"
            return ok

        pipe = Pipeline(pcfg, bundle, source_factory=create_source, send=send,
                        policy=PrivacyPolicy(pcfg.privacy, pcfg.name, "bench", egress.seal))
        pipe.start()
        try:
            time.sleep(settle)
            before, n0, c0 = _task_cpu(), results[0], time.process_time()
            time.sleep(window)
            after, n1, c1 = _task_cpu(), results[0], time.process_time()
        finally:
            pipe.stop()
            bundle.close()
    n = max(1, n1 - n0)
    split = {k: round(1000 * (v - before.get(k, 0.0)) / n, 2) for k, v in after.items()}
    return {"model": model.name, "threads": n_threads, "results_per_s": round(n / window, 1),
            "process_ms_per_result": round(1000 * (c1 - c0) / n, 2),
            "ms_per_result": dict(sorted(((k, v) for k, v in split.items() if v > 0.005),
                                         key=lambda kv: -kv[1]))}


def gaps(model: Path, n_threads: int, work: Path,
         pauses_ms: tuple[float, ...] = (0, 2, 5, 20), n: int = 200) -> dict[str, Any]:
    """CPU ms per invoke, and wall ms per invoke, with ``pauses_ms`` between invokes."""
    from edge_agent.bundle import load_bundle
    from edge_agent.sources.factory import create_source

    pcfg = pipeline_config(model, None, {"type": "video", "uri": str(write_video(
        work / "clip.avi")), "fps": 0}, threads=n_threads)
    bundle = load_bundle(pcfg.model, pcfg.score_threshold)
    try:
        source = create_source(pcfg.source)
        source.open()
        try:
            frame = source.read(5.0)
        finally:
            source.close()
        if frame is None:
            raise SystemExit(f"cpu_split gaps: no frame from {pcfg.source.uri}")
        x, _ = bundle.prepare(frame)
        for _ in range(20):
            bundle.runtime.infer(x)
        rows = []
        for pause in pauses_ms:
            invoke_s = 0.0
            c = time.process_time()
            for _ in range(n):
                a = time.perf_counter()
                bundle.runtime.infer(x)
                invoke_s += time.perf_counter() - a
                if pause:
                    time.sleep(pause / 1000)
            rows.append({"pause_ms": pause, "invoke_wall_ms": round(1000 * invoke_s / n, 2),
                         "cpu_ms_per_invoke": round(1000 * (time.process_time() - c) / n, 2)})
    finally:
        bundle.close()
    return {"model": model.name, "threads": n_threads, "rows": rows}


def _cpu_us(fn: Any, items: list[Any], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        c = time.process_time()
        for item in items:
            fn(item)
        best = min(best, (time.process_time() - c) / len(items))
    return round(best * 1e6, 1)


def idle(work: Path) -> dict[str, Any]:
    """CPU us per still frame for each piece of the gated raw and MJPEG paths (best of 3)."""
    import cv2
    import numpy as np

    from benchmarks.motion import write_raw_frames
    from edge_agent.config import MotionConfig
    from edge_agent.motion import MotionGate
    from edge_agent.sources.encoded import EncodedImage, reduce_factor
    from edge_agent.sources.synthetic import write_clip

    cv2.setNumThreads(1)  # as the pipeline runs OpenCV (DEFAULT_TUNING)
    clip = work / "still.avi"
    write_clip(clip, seconds=20.0, fps=10.0, episodes=((12.0, 13.0),), seed=3)
    width, height = write_raw_frames(clip, work / "still.yuyv")
    size = width * height * 2
    data = (work / "still.yuyv").read_bytes()
    raw = [np.frombuffer(data, np.uint8, size, i * size) for i in range(len(data) // size)]
    packets = []
    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_FORMAT, -1)  # the MJPEG packets as stored
    while True:
        ok, packet = cap.read()
        if not ok:
            break
        packets.append(packet.reshape(-1).copy())
    cap.release()
    cfg = MotionConfig(enabled=True)
    # a new EncodedImage per call, as the pipeline makes per frame (it caches its decode)
    def raw_reduced(b: Any) -> Any:
        return EncodedImage.yuyv(b, width, height).reduced(cfg.width)

    def jpeg(p: Any) -> EncodedImage:
        image = EncodedImage.jpeg(p)
        assert image is not None  # the clip's own packets
        return image

    raw_small = [raw_reduced(b) for b in raw]
    jpeg_small = [jpeg(p).reduced(cfg.width) for p in packets]

    def gate_us(smalls: list[Any]) -> float:
        gate = MotionGate(cfg)
        frames = list(enumerate(smalls))
        return _cpu_us(lambda f: gate.check(f[1], f[0] / 10), frames)

    return {"frame": f"{width}x{height}", "frames": len(raw),
            "raw_copy_us": _cpu_us(lambda b: b.copy(), raw),
            "raw_reduced_us": _cpu_us(raw_reduced, raw),
            "raw_gate_us": gate_us(raw_small),
            "raw_full_convert_us": _cpu_us(lambda b: EncodedImage.yuyv(b, width, height)
                                           .decode(), raw),
            "jpeg_packet_bytes": int(np.median([p.size for p in packets])),
            f"jpeg_reduced_1_{reduce_factor(width, cfg.width)}_us":
                _cpu_us(lambda p: jpeg(p).reduced(cfg.width), packets),
            "jpeg_gate_us": gate_us(jpeg_small),
            "jpeg_full_decode_us": _cpu_us(lambda p: jpeg(p).decode(), packets)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_split",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="default: the default model (BlazeFace)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=("threads", "gaps", "idle"),
                        default=["threads", "gaps", "idle"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    model = args.model or shared_model("face_detection_full_range_sparse.tflite") \
        or default_model()[0]
    if not model.exists():
        parser.error(f"--model: {model} does not exist (the default model: "
                     "`edge-agent models fetch`)")
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load_at_start": list(os.getloadavg())}
    with workdir() as work:
        if "idle" in args.only:
            out["idle"] = idle(work)
            print(json.dumps(out["idle"]))
        for n in args.threads:
            if "gaps" in args.only:
                out.setdefault("gaps", []).append(gaps(model, n, work))
                print(json.dumps(out["gaps"][-1]))
            if "threads" in args.only:
                out.setdefault("threads", []).append(threads(model, n, work))
                print(json.dumps(out["threads"][-1]))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
