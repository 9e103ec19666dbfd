"""``edge-agent bench MODEL``: bare invoke vs the whole pipeline on the same model.

Three runs in one process, with one interpreter (same threads, same delegate) and the same
frames:

* **bare**: ``invoke()`` back to back on the preprocessed frames, cycled: the physical limit;
* **sequential**: the usual hand-written script, one frame after the other (read ->
  preprocess -> invoke -> decode -> policy -> JSON);
* **pipeline**: edge-agent's threaded pipeline (capture/preprocess and decode/publish overlap
  with invoke), publishing every result through the real privacy policy into a sink that
  serialises it like the egress guard (no broker needed).

Fairness: everything is warmed up first; the runs alternate in ``rounds`` blocks of
``frames / rounds`` frames each (so a change in machine load hits all of them alike), and a
pipeline block is timed from its 3rd result to its last (its start-up is reported apart).
``rounds`` is odd (an even request runs one more), and every fps figure and every ratio comes
from the same round: the median round by bare fps, so the printed ratios are the printed fps
divided by each other. All rounds' rates are in the JSON (``rounds_fps``) to show the spread.
Reported: rates and their ratios to bare, per-stage p50/p95, CPU seconds per frame, peak RSS,
model load time and the time from pipeline start to its first result.
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

from edge_agent.bundle import ModelBundle, load_bundle
from edge_agent.config import ModelConfig, PipelineConfig, TargetConfig
from edge_agent.errors import EdgeAgentError
from edge_agent.pipeline import DEFAULT_TUNING, Pipeline, apply_process_tuning
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.privacy.seal import new_seal
from edge_agent.sources.factory import create_source
from edge_agent.types import Result

SKIP = 2  # pipeline results excluded from its rate (start-up)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _stages(stage: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"p50": round(_pct(v, 0.5) or 0, 3), "p95": round(_pct(v, 0.95) or 0, 3)}
            for k, v in stage.items()}


def _source_cfg(source: str | None, frames: int) -> dict[str, Any]:
    if source is None:
        return {"type": "synthetic", "fps": 0, "frames": max(frames, 50), "loop": True,
                "width": 640, "height": 480}
    p = Path(source)
    if p.is_dir() or any(c in source for c in "*?["):
        return {"type": "images", "uri": source, "fps": 0, "loop": True}
    return {"type": "video", "uri": source, "fps": 0, "loop": True}


def _delegate(value: str | None, options: list[str] | None) -> Any:
    if value is None or value == "edgetpu":  # edgetpu: the configured library, no options
        return value
    opts = dict(o.split("=", 1) for o in options or [])
    return {"library": value, "options": opts}


class _Sink:
    """Serialises what the guard would publish, timestamps it, counts it."""

    def __init__(self, limit: int) -> None:
        self.times: list[float] = []
        self.bytes = 0
        self.limit = limit
        self.done = threading.Event()

    def send(self, msg: Any) -> bool:
        body = json.dumps(dict(msg.payload), separators=(",", ":"), default=str).encode()
        self.bytes += len(body)
        self.times.append(time.perf_counter())
        if len(self.times) >= self.limit:
            self.done.set()
        return True


def _rate(times: list[float]) -> float:
    t = times[SKIP:]
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0


class _Runs:
    """The three runs on one bundle; each call runs one block and returns its rate."""

    def __init__(self, pcfg: PipelineConfig, bundle: ModelBundle, inputs: list[Any],
                 block: int) -> None:
        self.pcfg = pcfg
        self.bundle = bundle
        self.inputs = inputs
        self.block = block
        self.seal = new_seal()
        self.cpu: dict[str, list[float]] = defaultdict(list)
        self.frames: dict[str, int] = defaultdict(int)
        self.invoke_ms: list[float] = []
        self.seq_stage: dict[str, list[float]] = defaultdict(list)
        self.pipe_stage: dict[str, list[float]] = defaultdict(list)
        self.first_result_ms: list[float] = []

    def _policy(self) -> Any:
        return PrivacyPolicy(self.pcfg.privacy, self.pcfg.name, "bench", self.seal)

    def bare(self) -> float:
        infer = self.bundle.runtime.infer
        c, t0 = time.process_time(), time.perf_counter()
        for k in range(self.block):
            a = time.perf_counter()
            infer(self.inputs[k % len(self.inputs)])
            self.invoke_ms.append((time.perf_counter() - a) * 1000)
        rate = self.block / (time.perf_counter() - t0)
        self.cpu["bare"].append(time.process_time() - c)
        self.frames["bare"] += self.block
        return rate

    def sequential(self) -> float:
        policy, sink, b = self._policy(), _Sink(0), self.bundle
        src = create_source(self.pcfg.source)
        src.open()
        c = time.process_time()
        try:
            while len(sink.times) < self.block + SKIP:
                a = time.perf_counter()
                frame = src.read(1.0)
                if frame is None:
                    continue
                t1 = time.perf_counter()
                x, transform = b.prepare(frame)
                t2 = time.perf_counter()
                outs = b.runtime.infer(x)
                t3 = time.perf_counter()
                inf = b.decode(outs, transform)
                t4 = time.perf_counter()
                sink.send(policy.result(Result(self.pcfg.name, frame.index, frame.ts,
                                               frame.width, frame.height, b.ref,
                                               (t3 - t2) * 1000, inf)))
                t5 = time.perf_counter()
                for k, v in (("capture", t1 - a), ("preprocess", t2 - t1), ("invoke", t3 - t2),
                             ("decode", t4 - t3), ("policy+publish", t5 - t4)):
                    self.seq_stage[k].append(v * 1000)
        finally:
            src.close()
        self.cpu["sequential"].append(time.process_time() - c)
        self.frames["sequential"] += len(sink.times)
        return _rate(sink.times)

    def pipeline(self) -> float:
        def observe(_p: str, name: str, seconds: float) -> None:
            self.pipe_stage[name].append(seconds * 1000)

        sink = _Sink(self.block + SKIP)
        pipe = Pipeline(self.pcfg, self.bundle, source_factory=create_source,
                        policy=self._policy(), send=sink.send, observe=observe)
        c, t0 = time.process_time(), time.perf_counter()
        pipe.start()
        sink.done.wait(600)
        pipe.stop()
        self.cpu["pipeline"].append(time.process_time() - c)
        self.frames["pipeline"] += len(sink.times)
        if sink.times:
            self.first_result_ms.append((sink.times[0] - t0) * 1000)
        return _rate(sink.times)


def _target(value: str, options: list[str] | None) -> Any:
    """A ``--target`` value as a targets entry: cpu, edgetpu, or a delegate library."""
    if value in {"cpu", "edgetpu"}:
        return value
    return {"delegate": value, "options": dict(o.split("=", 1) for o in options or [])}


def run_targets(model: str, targets: list[Any], **kw: Any) -> dict[str, Any]:
    """:func:`run_bench` once per execution target (each alone: no fallback), in one process.

    Returns ``{"targets": {name: figures or {"error": ...}}, "baseline": name,
    "ratio_to_baseline": {name: {"bare": r, "pipeline": r}}}``; the baseline is ``cpu`` when it
    was measured, else the first target that ran. Ratios are of the median fps of each run.
    """
    out: dict[str, Any] = {}
    for entry in targets:
        label = TargetConfig.model_validate(
            {"delegate": entry} if isinstance(entry, str) else entry).label
        try:
            out[label] = run_bench(model, targets=[entry], **kw)
        except EdgeAgentError as exc:
            out[label] = {"error": str(exc)}
    ran = [k for k, v in out.items() if "error" not in v]
    base = "cpu" if "cpu" in ran else (ran[0] if ran else None)
    ratios: dict[str, dict[str, float | None]] = {}
    if base is not None:
        for k in ran:
            ratios[k] = {run: round(out[k][run]["fps"] / out[base][run]["fps"], 3)
                         if out[base][run]["fps"] else None for run in ("bare", "pipeline")}
    return {"targets": out, "baseline": base, "ratio_to_baseline": ratios}


def format_targets(r: dict[str, Any]) -> str:
    """One table per target, then the comparison against the baseline target."""
    parts = []
    for name, fig in r["targets"].items():
        parts.append(f"== target {name}")
        parts.append(f"cannot run: {fig['error']}" if "error" in fig else format_table(fig))
        parts.append("")
    if r["baseline"] is not None:
        parts.append(f"{'target':<16}{'bare fps':>10}{'pipeline fps':>14}"
                     f"{'bare / ' + r['baseline']:>16}{'pipeline / ' + r['baseline']:>20}")
        for name, ratio in r["ratio_to_baseline"].items():
            fig = r["targets"][name]
            parts.append(f"{name:<16}{fig['bare']['fps']:>10.1f}{fig['pipeline']['fps']:>14.1f}"
                         f"{ratio['bare'] or 0:>16.3f}{ratio['pipeline'] or 0:>20.3f}")
    return "\n".join(parts)


def run_bench(model: str, *, source: str | None = None, threads: int = 2,
              delegate: Any = None, decoder: str = "auto", labels: str | None = None,
              frames: int = 200, rounds: int = 3,
              targets: list[Any] | None = None) -> dict[str, Any]:
    """Run the three measurements; return a dict of figures.

    ``targets`` (a model config ``targets`` list) replaces ``delegate``.
    """
    apply_process_tuning(DEFAULT_TUNING)  # the same process settings for every run
    t_start = time.perf_counter()
    pcfg = PipelineConfig.model_validate({
        "name": "bench", "source": _source_cfg(source, frames),
        "model": {"path": model, "labels": labels, "decoder": decoder, "threads": threads,
                  **({"targets": targets} if targets else {"delegate": delegate})},
    })
    mcfg: ModelConfig = pcfg.model
    bundle = load_bundle(mcfg, pcfg.score_threshold)
    load_s = time.perf_counter() - t_start
    try:
        return _measure(pcfg, bundle, source, frames, rounds, model, load_s)
    finally:
        bundle.close()  # ends a delegate target's worker thread


def _measure(pcfg: PipelineConfig, bundle: ModelBundle, source: str | None, frames: int,
             rounds: int, model: str, load_s: float) -> dict[str, Any]:
    # the same real frames for every run: preprocessed copies for bare, the source for the rest
    src = create_source(pcfg.source)
    src.open()
    inputs: list[Any] = []
    try:
        while len(inputs) < 16:
            f = src.read(1.0)
            if f is not None:
                x, _ = bundle.prepare(f)
                inputs.append([a.copy() for a in x])
    except EOFError:
        pass
    finally:
        src.close()
    if not inputs:
        raise EdgeAgentError(f"no frames could be read from {source}")
    for k in range(5):  # warm-up: first invokes allocate and pack weights
        bundle.runtime.infer(inputs[k % len(inputs)])

    rounds = max(1, rounds)
    rounds += 1 - rounds % 2  # odd: the median is a round that was measured
    per_run = max(5, frames // rounds)
    runs = _Runs(pcfg, bundle, inputs, per_run)
    rates: dict[str, list[float]] = defaultdict(list)
    order = [("bare", runs.bare), ("sequential", runs.sequential), ("pipeline", runs.pipeline)]
    for r in range(rounds):
        for name, fn in order[r % 3:] + order[:r % 3]:
            rates[name].append(fn())
    info = bundle.runtime.info

    # one round for every figure: the median by bare fps (the baseline tracks machine load)
    mid = sorted(range(rounds), key=lambda i: rates["bare"][i])[rounds // 2]
    fps = {k: round(v[mid], 2) for k, v in rates.items()}

    def ratio(a: str, b: str) -> float | None:
        return round(fps[a] / fps[b], 3) if fps[b] > 0 else None

    def cpu(name: str) -> float:
        return round(sum(runs.cpu[name]) / max(1, runs.frames[name]), 4)

    return {
        "model": str(model), "backend": f"{info.backend} {info.backend_version}",
        "delegate": info.delegate, "fallback": info.fallback_reason, "threads": info.threads,
        "source": source or "synthetic 640x480", "frames": frames, "rounds": rounds,
        "frames_per_run": per_run, "median_round": mid + 1,
        "rounds_fps": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "load_s": round(load_s, 3),
        "bare": {"fps": fps["bare"], "cpu_s_per_frame": cpu("bare"),
                 "invoke_ms_p50": round(_pct(runs.invoke_ms, 0.5) or 0, 2),
                 "invoke_ms_p95": round(_pct(runs.invoke_ms, 0.95) or 0, 2)},
        "sequential": {"fps": fps["sequential"], "ratio_to_bare": ratio("sequential", "bare"),
                       "cpu_s_per_frame": cpu("sequential"), "stages_ms": _stages(runs.seq_stage)},
        "pipeline": {
            "fps": fps["pipeline"], "ratio_to_bare": ratio("pipeline", "bare"),
            "ratio_to_sequential": ratio("pipeline", "sequential"),
            "cpu_s_per_frame": cpu("pipeline"),
            "first_result_ms": round(min(runs.first_result_ms), 1) if runs.first_result_ms
            else None,
            "stages_ms": _stages(runs.pipe_stage),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def format_table(r: dict[str, Any]) -> str:
    """A human-readable table of :func:`run_bench`'s figures."""
    fb = f" (fell back: {r['fallback']})" if r.get("fallback") else ""
    lines = [
        f"model    {r['model']}",
        f"runtime  {r['backend']}, delegate {r['delegate'] or 'none (CPU/XNNPACK)'}{fb}, "
        f"{r['threads']} threads; source {r['source']}",
        f"rounds   {r['rounds']} alternating rounds of {r['frames_per_run']} frames per run; "
        f"every figure below is from round {r['median_round']} (the median by bare fps)",
        "",
        f"{'run':<12}{'fps':>9}{'/ bare':>9}{'CPU s/frame':>13}",
        f"{'bare':<12}{r['bare']['fps']:>9.1f}{1.0:>9.3f}{r['bare']['cpu_s_per_frame']:>13.4f}",
    ]
    for name in ("sequential", "pipeline"):
        x = r[name]
        lines.append(f"{name:<12}{x['fps']:>9.1f}{x['ratio_to_bare'] or 0:>9.3f}"
                     f"{x['cpu_s_per_frame']:>13.4f}")
    lines += [
        f"pipeline / sequential {r['pipeline']['ratio_to_sequential']}",
        "",
        f"bare invoke p50 {r['bare']['invoke_ms_p50']} ms, p95 {r['bare']['invoke_ms_p95']} ms",
        f"{'stage (ms)':<22}{'pipeline p50':>13}{'p95':>9}{'sequential p50':>16}{'p95':>9}",
    ]
    seq = r["sequential"]["stages_ms"]
    for k, v in r["pipeline"]["stages_ms"].items():
        s = seq.get(k) or (seq.get("policy+publish") if k == "policy" else None) or {}
        sp50 = f"{s['p50']:>16.3f}{s['p95']:>9.3f}" if s else ""
        lines.append(f"  {k:<20}{v['p50']:>13.3f}{v['p95']:>9.3f}{sp50}")
    lines.append(
        f"model load {r['load_s']} s; pipeline start to first result "
        f"{r['pipeline']['first_result_ms']} ms; peak RSS {r['peak_rss_mb']} MB")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    """``edge-agent bench MODEL [--source FILE] [--threads N] [--delegate D | --target T ...]
    [--json]``."""
    wanted = getattr(args, "target", None)
    if wanted:
        both = run_targets(
            args.model, [_target(t, getattr(args, "delegate_option", None)) for t in wanted],
            source=args.source, threads=args.threads, decoder=args.decoder, labels=args.labels,
            frames=args.frames, rounds=getattr(args, "rounds", 3))
        print(json.dumps(both, indent=2) if args.json else format_targets(both))
        return 0
    result = run_bench(
        args.model,
        source=args.source,
        threads=args.threads,
        delegate=_delegate(args.delegate, getattr(args, "delegate_option", None)),
        decoder=args.decoder,
        labels=args.labels,
        frames=args.frames,
        rounds=getattr(args, "rounds", 3),
    )
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0
