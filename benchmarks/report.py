"""BENCHMARKS.md from the figures of one run."""

from __future__ import annotations

from typing import Any

from benchmarks.common import dump


def _verdict(value: float | None, goal: float, higher_is_better: bool) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    ok = value >= goal if higher_is_better else value <= goal
    return "meets" if ok else "**misses**"


def _r(d: dict[str, Any]) -> str:
    return f"{d['median']:.3f} ({d['min']:.2f}–{d['max']:.2f})"


def render(fig: dict[str, Any]) -> str:
    """The whole BENCHMARKS.md."""
    m = fig["machine"]
    mem = fig.get("memory", {})
    if mem.get("source"):
        mem_note = (f"The memory section is **not** from this run: it was copied from "
                    f"{mem['source']} (`--rss-from`).")
    elif mem and "growth_mb" in mem:
        mem_note = ("The memory section is absolute (MB over time), measured by this run in a "
                    "separate daemon process it started (`benchmarks.memory`).")
    else:
        mem_note = "There is no memory section in this run."
    out = [
        "# Benchmarks",
        "",
        "Written by `./dev bench` (`python -m benchmarks`). How each figure was made: every "
        "ratio (throughput, motion, latency, int8 vs float) compares runs measured in this "
        "one process run, in alternating short blocks (A B A B ...), and is the median of the "
        "per-round ratios with the lowest and highest round in brackets. The fps and CPU ms "
        "next to them are absolute figures of this machine under the load stated below, shown "
        f"only to scale the ratios. {mem_note} Do not edit by hand: re-run.",
        "",
        f"- command: `{fig['command']}`; to reproduce: `./dev bench` (every section, the "
        "memory run 120 s) or `python -m benchmarks --rss-seconds 600` (the 10-minute memory "
        "figure); `--help` lists the options",
        f"- date: {fig['date']}, duration {fig['duration_s']:.0f} s",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['system']}; Python {m['python']}, "
        f"LiteRT {m['litert']}, numpy {m['numpy']}, OpenCV {m['opencv']}",
        f"- load average at start {m['load_at_start']}, at end {fig['load_at_end']} "
        f"on {m['cores']} cores{_shared(m, fig)} (other work on the machine makes the ratios "
        "noisier; compare the round spread)",
        "",
    ]
    out += _summary(fig)
    out += _throughput(fig.get("throughput", []), fig.get("notes", {}))
    out += _motion(fig.get("motion", []))
    out += _latency(fig.get("latency", []))
    out += _memory(fig.get("memory", {}))
    out += _quant(fig.get("quant", {}))
    out += ["## Notes", ""] + [f"- {n}" for n in fig.get("notes", {}).get("general", [])] + [""]
    out += ["<details><summary>All figures (JSON)</summary>", "", "```json", dump(fig), "```",
            "", "</details>", ""]
    return "\n".join(out)


def _shared(m: dict[str, Any], fig: dict[str, Any]) -> str:
    """``: the machine was shared`` when the load average says other work was running."""
    try:
        loads = [*m["load_at_start"], *fig["load_at_end"]]
        busy = max(float(x) for x in loads) > 0.5 * float(m["cores"])
    except (KeyError, TypeError, ValueError):
        return ""
    return ": **the machine was shared with other work during this run**" if busy else ""


def _summary(fig: dict[str, Any]) -> list[str]:
    """One line per goal: the figure and whether it meets the goal."""
    lines = ["## Against the goals", "", "| goal | figure | verdict |", "|---|---|---|"]
    for r in fig.get("throughput", []):
        if "skipped" in r or not r.get("goal", True):
            continue
        pb, ps = r["pipeline_over_bare"]["median"], r["pipeline_over_sequential"]["median"]
        lines.append(f"| pipeline / bare >= 0.90, {r['model']}, {r['threads']} threads | "
                     f"{pb:.3f} | {_verdict(pb, 0.90, True)} |")
        lines.append(f"| pipeline (publishing) / sequential >= 1.0, {r['model']}, "
                     f"{r['threads']} threads | {ps:.3f} | {_verdict(ps, 1.0, True)} |")
    for r in fig.get("motion", []):
        if "skipped" in r:
            continue
        lines.append(f"| motion CPU on / off <= 0.15, {r['model']} | {r['cpu_ratio']:.3f}, "
                     f"{r['episodes_reported']} of {len(r['episodes'])} episodes reported | "
                     f"{_verdict(r['cpu_ratio'], 0.15, False)}"
                     f"{'' if not r['episodes_missed'] else ' (**episodes missed**)'} |")
    for r in fig.get("latency", []):
        if "skipped" in r:
            continue
        a = r["added_over_invoke"]
        lines.append(f"| added latency / invoke (no goal), {r['model']} | p50 {a['p50']:.2f}, "
                     f"p99 {a['p99']:.2f} | info |")
    mem = fig.get("memory", {})
    if mem and "growth_mb" in mem:
        lines.append(f"| RSS growth within 2 MB over {mem['seconds']} s | "
                     f"{mem['growth_mb']:+.2f} MB (peak {mem['peak_rss_mb']} MB) | "
                     f"{_verdict(abs(mem['growth_mb']), 2.0, False)} |")
    return [*lines, ""]


def _throughput(rows: list[dict[str, Any]], notes: dict[str, Any]) -> list[str]:
    out = ["## Throughput: pipeline vs bare invoke vs the sequential script", "",
           "640x480 MJPEG clip, unpaced. *bare*: `invoke()` back to back; *sequential*: read -> "
           "resize -> invoke -> decode -> policy -> JSON, one after the other, publishing "
           "nothing; *pipeline*: edge-agent's three threads, publishing every result through "
           "the policy, the egress guard, the SQLite outbox and paho to a local mosquitto "
           "(QoS 1); *untuned*: the pipeline without its OpenCV-threads/GIL-interval tuning. "
           "Same interpreter and threads in every run.", ""]
    if not rows:
        return [*out, "_skipped_", ""]
    out += ["| model | threads | bare fps | pipeline / bare (goal >= 0.90) | "
            "pipeline / sequential (goal >= 1.0) | sequential / bare | pipeline / untuned | "
            "CPU ms per frame: bare, seq, pipeline |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['model']} | | | _{r['skipped']}_ | | | | |")
            continue
        goal = r.get("goal", True)
        pb, ps = r["pipeline_over_bare"], r["pipeline_over_sequential"]
        v1 = _verdict(pb["median"], 0.90, True) if goal else "info"
        v2 = _verdict(ps["median"], 1.0, True) if goal else "info"
        cpu = r["cpu_ms_per_frame"]
        unt = _r(r["pipeline_over_untuned"]) if "pipeline_over_untuned" in r else "–"
        out.append(
            f"| {r['model']} | {r['threads']} | {r['fps']['bare']:.1f} | {_r(pb)} {v1} | "
            f"{_r(ps)} {v2} | {_r(r['sequential_over_bare'])} | {unt} | "
            f"{cpu.get('bare', 0):.1f}, {cpu.get('sequential', 0):.1f}, "
            f"{cpu.get('pipeline', 0):.1f} |")
    out.append("")
    return out


def _motion(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Motion gating: CPU seconds with the gate / without (goal <= 0.15)", ""]
    if not rows:
        return [*out, "_skipped_", ""]
    out += ["| model | clip | CPU s off | CPU s on | on / off | frames inferred on / off | "
            "perfect gate (moving frames) | episodes reported |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['model']} | _{r['skipped']}_ | | | | | | |")
            continue
        out.append(
            f"| {r['model']} | {r['clip']} | {r['cpu_s']['gate_off']} | {r['cpu_s']['gate_on']} "
            f"| {r['cpu_ratio']:.3f} {_verdict(r['cpu_ratio'], 0.15, False)} | "
            f"{r['inferred']['gate_on']} / {r['inferred']['gate_off']} | "
            f"{r['moving_fraction']:.3f} | {r['episodes_reported']} of {len(r['episodes'])} |")
    out += ["", "Both runs decode every frame of the clip (the gate needs them); with the gate on "
            "the model runs on motion, for 3 frames after it, and on the 30 s heartbeat.", ""]
    return out


def _latency(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Added latency, capture to PUBACK, over invoke time", "",
           "Paced source at about half of what the model can take (like a camera, no queueing); "
           "a subscriber on the same host stamps arrivals (the broker forwards a QoS 1 message "
           "when it sends the PUBACK). `added = capture-to-arrival - inference_ms`.", ""]
    if not rows:
        return [*out, "_skipped_", ""]
    out += ["| model | threads | paced fps | added / invoke p50 | added / invoke p99 | "
            "total / invoke p50, p99 | latency ms p50, p99 | invoke ms p50, p99 |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['model']} | _{r['skipped']}_ | | | | | | |")
            continue
        a, t = r["added_over_invoke"], r["latency_over_invoke"]
        out.append(f"| {r['model']} | {r['threads']} | {r['paced_fps']} | {a['p50']:.2f} | "
                   f"{a['p99']:.2f} | {t['p50']:.2f}, {t['p99']:.2f} | "
                   f"{r['latency_ms']['p50']}, {r['latency_ms']['p99']} | "
                   f"{r['invoke_ms']['p50']}, {r['invoke_ms']['p99']} |")
    out.append("")
    return out


def _memory(r: dict[str, Any]) -> list[str]:
    out = ["## Memory: the daemon with the default model", ""]
    if not r or "skipped" in r or "error" in r:
        return [*out, f"_{r.get('skipped') or r.get('error') or 'skipped'}_", ""]
    src = f" (from {r['source']})" if "source" in r else ""
    out += [f"`edge-agent run` (BlazeFace full range, 640x480 MJPEG clip paced at {r['fps']:g} "
            "fps, every result published through the outbox to a local mosquitto), sampled "
            f"once a second for {r['seconds']} s{src}.",
            "",
            "| peak RSS | RSS after warm-up | RSS at end | growth (goal: within 2 MB) | "
            "slope | CPU s |", "|---|---|---|---|---|---|",
            f"| {r['peak_rss_mb']} MB | {r['rss_after_warmup_mb']} MB | {r['rss_end_mb']} MB | "
            f"{r['growth_mb']:+.2f} MB {_verdict(abs(r['growth_mb']), 2.0, False)} | "
            f"{r['slope_mb_per_10min']:+.2f} MB / 10 min | {r['cpu_s']} |", ""]
    return out


def _quant(q: dict[str, Any]) -> list[str]:
    out = ["## int8 vs float, same model", ""]
    bf, hw = q.get("blazeface", {}), q.get("hello_world", {})
    if bf and "skipped" not in bf:
        out += [f"**{bf['model']}**, quantised here to full integer by `edge-agent model "
                f"quantize`'s code ({bf['quantize_s']} s, calibrated on {bf['images']} images), "
                f"{bf['threads']} threads:", "",
                "| | float | int8 |", "|---|---|---|",
                f"| invoke ms | {bf['invoke_ms']['float']} | {bf['invoke_ms']['int8']} |",
                f"| int8 speed / float speed | | {_r(bf['int8_speed_over_float'])} |",
                f"| faces found on {bf['images']} images | {bf['faces_found']['float']} | "
                f"{bf['faces_found']['int8']} |",
                f"| IoU of each float face with its best int8 match (mean, min) | | "
                f"{bf['matched_iou_mean']}, {bf['matched_iou_min']} |",
                f"| file size (bytes) | {bf['size_bytes']['float']} | {bf['size_bytes']['int8']} |",
                ""]
    elif bf:
        out += [f"BlazeFace: _{bf['skipped']}_", ""]
    if hw and "skipped" not in hw:
        out += ["**hello_world** (TFLM sine regression, ../shared/models/sensor), 1 thread:", "",
                "| | float | int8 |", "|---|---|---|",
                f"| invoke µs | {hw['invoke_us']['float']} | {hw['invoke_us']['int8']} |",
                f"| int8 speed / float speed | | {_r(hw['int8_speed_over_float'])} |",
                f"| mean abs error vs sin(x) | {hw['mean_abs_error']['float']} | "
                f"{hw['mean_abs_error']['int8']} |", ""]
    elif hw:
        out += [f"hello_world: _{hw['skipped']}_", ""]
    return out


def main() -> int:
    """``python -m benchmarks.report FIGURES.json OUT.md``: render again from saved figures."""
    import json
    import sys

    fig = json.loads(open(sys.argv[1]).read())  # noqa: SIM115
    with open(sys.argv[2], "w") as f:
        f.write(render(fig))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
