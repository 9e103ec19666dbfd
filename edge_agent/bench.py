"""``edge-agent bench MODEL``: bare invoke vs the whole pipeline on the same model.

Three runs in one process, on the same interpreter settings and the same frames:

* **bare**: ``invoke()`` on one preprocessed input, back to back: the physical limit.
* **sequential**: the usual hand-written script, one frame after the other
  (read -> preprocess -> invoke -> decode -> policy -> serialise).
* **pipeline**: edge-agent's threaded pipeline (capture/preprocess and decode/publish overlap
  with invoke), publishing every result through the real privacy policy and a serialising sink.

Reported as ratios to the bare run, with per-stage p50/p95, CPU seconds per frame, peak RSS and
the time from start to the first result.
"""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from edge_agent.bundle import load_bundle
from edge_agent.config import ModelConfig, PipelineConfig
from edge_agent.errors import EdgeAgentError


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def _source_cfg(source: str | None, frames: int) -> dict[str, Any]:
    if source is None:
        return {"type": "synthetic", "fps": 0, "frames": frames, "width": 640, "height": 480}
    p = Path(source)
    if p.is_dir() or any(c in source for c in "*?["):
        return {"type": "images", "uri": source, "fps": 0, "loop": True}
    return {"type": "video", "uri": source, "fps": 0, "loop": True}


class _CountingSink:
    """Serialises what the guard would publish, and counts it (no broker needed)."""

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.first_at: float | None = None
        self.done = threading.Event()
        self.limit = 0

    def send(self, msg: Any) -> bool:
        body = json.dumps(dict(msg.payload), separators=(",", ":"), default=str).encode()
        self.bytes += len(body)
        self.count += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if self.limit and self.count >= self.limit:
            self.done.set()
        return True


def run_bench(
    model: str,
    *,
    source: str | None = None,
    threads: int = 2,
    delegate: str | None = None,
    decoder: str = "auto",
    labels: str | None = None,
    frames: int = 200,
) -> dict[str, Any]:
    """Run the three measurements; return a dict of figures."""
    from edge_agent.pipeline import Pipeline
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.privacy.seal import new_seal
    from edge_agent.sources.factory import create_source

    t_start = time.perf_counter()
    mcfg = ModelConfig(
        path=Path(model),
        labels=Path(labels) if labels else None,
        decoder=decoder,
        threads=threads,
        delegate=delegate,
    )  # type: ignore[arg-type]
    pcfg = PipelineConfig.model_validate(
        {
            "name": "bench",
            "source": _source_cfg(source, frames + 20),
            "model": mcfg.model_dump(),
        }
    )
    bundle = load_bundle(mcfg, pcfg.score_threshold)
    load_s = time.perf_counter() - t_start
    seal = new_seal()

    # frames: read once, shared by bare and sequential runs
    src = create_source(pcfg.source)
    src.open()
    images = []
    try:
        while len(images) < min(frames, 50):
            f = src.read(1.0)
            if f is not None:
                images.append(f)
    except EOFError:
        pass
    finally:
        src.close()
    if not images:
        raise EdgeAgentError(f"no frames could be read from {source}")

    # bare invoke
    inputs, _ = bundle.prepare(images[0])
    for _ in range(5):
        bundle.runtime.infer(inputs)
    invoke_ms: list[float] = []
    t0 = time.perf_counter()
    for _ in range(frames):
        a = time.perf_counter()
        bundle.runtime.infer(inputs)
        invoke_ms.append((time.perf_counter() - a) * 1000)
    bare_s = time.perf_counter() - t0

    # sequential: the hand-written script
    policy = PrivacyPolicy(pcfg.privacy, "bench", "bench", seal)
    sink = _CountingSink()
    src = create_source(pcfg.source)
    src.open()
    seq_stage: dict[str, list[float]] = defaultdict(list)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    n = 0
    from edge_agent.types import Result

    try:
        while n < frames:
            a = time.perf_counter()
            frame = src.read(1.0)
            if frame is None:
                continue
            b = time.perf_counter()
            x, transform = bundle.prepare(frame)
            c = time.perf_counter()
            outs = bundle.runtime.infer(x)
            d = time.perf_counter()
            inf = bundle.decode(outs, transform)
            e = time.perf_counter()
            msg = policy.result(
                Result(
                    "bench",
                    frame.index,
                    frame.ts,
                    frame.width,
                    frame.height,
                    bundle.ref,
                    (d - c) * 1000,
                    inf,
                )
            )
            sink.send(msg)
            f_ = time.perf_counter()
            for k, v in (
                ("capture", b - a),
                ("preprocess", c - b),
                ("invoke", d - c),
                ("decode", e - d),
                ("policy+publish", f_ - e),
            ):
                seq_stage[k].append(v * 1000)
            n += 1
    except EOFError:
        pass
    finally:
        src.close()
    seq_s = time.perf_counter() - t0
    seq_cpu = time.process_time() - cpu0
    seq_n = n

    # pipeline
    stage: dict[str, list[float]] = defaultdict(list)

    def observe(_p: str, name: str, seconds: float) -> None:
        stage[name].append(seconds * 1000)

    sink2 = _CountingSink()
    sink2.limit = frames
    policy2 = PrivacyPolicy(pcfg.privacy, "bench", "bench", seal)
    pipe = Pipeline(
        pcfg, bundle, source_factory=create_source, policy=policy2, send=sink2.send, observe=observe
    )
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    pipe.start()
    sink2.done.wait(600)
    pipe_s = time.perf_counter() - t0
    pipe.stop()
    pipe_cpu = time.process_time() - cpu0
    pipe_n = sink2.count
    first_ms = ((sink2.first_at - t0) * 1000) if sink2.first_at else None

    bare_fps = frames / bare_s
    seq_fps = seq_n / seq_s if seq_s else 0.0
    pipe_fps = pipe_n / pipe_s if pipe_s else 0.0
    info = bundle.runtime.info
    return {
        "model": str(model),
        "backend": f"{info.backend} {info.backend_version}",
        "delegate": info.delegate,
        "threads": threads,
        "source": source or "synthetic 640x480",
        "frames": frames,
        "load_s": round(load_s, 3),
        "bare": {
            "fps": round(bare_fps, 2),
            "invoke_ms_p50": round(_pct(invoke_ms, 0.5) or 0, 2),
            "invoke_ms_p95": round(_pct(invoke_ms, 0.95) or 0, 2),
        },
        "sequential": {
            "fps": round(seq_fps, 2),
            "ratio_to_bare": round(seq_fps / bare_fps, 3),
            "cpu_s_per_frame": round(seq_cpu / max(seq_n, 1), 4),
            "stages_ms": {
                k: {"p50": round(_pct(v, 0.5) or 0, 3), "p95": round(_pct(v, 0.95) or 0, 3)}
                for k, v in seq_stage.items()
            },
        },
        "pipeline": {
            "fps": round(pipe_fps, 2),
            "ratio_to_bare": round(pipe_fps / bare_fps, 3),
            "ratio_to_sequential": round(pipe_fps / seq_fps, 3) if seq_fps else None,
            "cpu_s_per_frame": round(pipe_cpu / max(pipe_n, 1), 4),
            "first_result_ms": round(first_ms, 1) if first_ms else None,
            "stages_ms": {
                k: {"p50": round(_pct(v, 0.5) or 0, 3), "p95": round(_pct(v, 0.95) or 0, 3)}
                for k, v in stage.items()
            },
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def format_table(r: dict[str, Any]) -> str:
    """A human-readable table of :func:`run_bench`'s figures."""
    lines = [
        f"model    {r['model']}",
        f"runtime  {r['backend']}, delegate {r['delegate'] or 'none (CPU/XNNPACK)'}, "
        f"{r['threads']} threads; source {r['source']}; {r['frames']} frames",
        "",
        f"{'run':<12}{'fps':>9}{'/ bare':>9}{'CPU s/frame':>13}",
        f"{'bare':<12}{r['bare']['fps']:>9.1f}{1.0:>9.3f}{'':>13}",
        f"{'sequential':<12}{r['sequential']['fps']:>9.1f}"
        f"{r['sequential']['ratio_to_bare']:>9.3f}{r['sequential']['cpu_s_per_frame']:>13.4f}",
        f"{'pipeline':<12}{r['pipeline']['fps']:>9.1f}"
        f"{r['pipeline']['ratio_to_bare']:>9.3f}{r['pipeline']['cpu_s_per_frame']:>13.4f}",
        "",
        f"bare invoke p50 {r['bare']['invoke_ms_p50']} ms, p95 {r['bare']['invoke_ms_p95']} ms",
        "pipeline stages (ms)    p50      p95",
    ]
    for k, v in r["pipeline"]["stages_ms"].items():
        lines.append(f"  {k:<20}{v['p50']:>7.3f}  {v['p95']:>7.3f}")
    lines.append(
        f"first result after {r['pipeline']['first_result_ms']} ms "
        f"(model load {r['load_s']} s); peak RSS {r['peak_rss_mb']} MB"
    )
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    """``edge-agent bench MODEL [--source FILE] [--threads N] [--delegate D] [--json]``."""
    result = run_bench(
        args.model,
        source=args.source,
        threads=args.threads,
        delegate=args.delegate,
        decoder=args.decoder,
        labels=args.labels,
        frames=args.frames,
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
