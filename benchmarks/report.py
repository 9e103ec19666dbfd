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
    out += _result_path(fig.get("result_path", {}), fig.get("previous") or {})
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


MOTION_GOAL = 0.08  # issue 20: static-scene CPU with the gate / without
FAST_MODEL_GOAL = 0.85  # issue 20: BlazeFace full range, 2 threads, pipeline / bare
FAST_MODEL_CPU_GOAL = 1.15  # and its pipeline CPU per frame over bare's


def _goal_rows(fig: dict[str, Any]) -> list[tuple[str, str, float | None, str]]:
    """``(key, goal, value, figure text)`` per goal of one run's figures."""
    rows: list[tuple[str, str, float | None, str]] = []
    for r in fig.get("throughput", []):
        if "skipped" in r:
            continue
        m, th = r["model"], r["threads"]
        pb, ps = r["pipeline_over_bare"]["median"], r["pipeline_over_sequential"]["median"]
        if r.get("goal", True):
            rows.append((f"pb/{m}/{th}", f"pipeline / bare >= 0.90, {m}, {th} threads", pb,
                         f"{pb:.3f}"))
            rows.append((f"ps/{m}/{th}", f"pipeline (publishing) / sequential >= 1.0, {m}, "
                         f"{th} threads", ps, f"{ps:.3f}"))
        elif th == 2:  # the fast default model: the result path's share shows most
            cpu = r["cpu_ms_per_frame"]
            ratio = cpu["pipeline"] / cpu["bare"] if cpu.get("bare") else None
            # the same run's pipeline with every frame decoded in full (before model-scale
            # decoding), when the model's input allowed a smaller decode of the clip
            full = r.get("full_decode_over_bare")
            full_pb = "" if full is None else f" (full decodes: {full['median']:.3f})"
            full_cpu = cpu.get("pipeline_full_decode")
            full_ratio = ("" if full_cpu is None or not cpu.get("bare")
                          else f" (full decodes: {full_cpu / cpu['bare']:.3f})")
            rows.append((f"fast_pb/{m}", f"pipeline / bare >= {FAST_MODEL_GOAL}, {m}, 2 threads",
                         pb, f"{pb:.3f}{full_pb}"))
            rows.append((f"fast_cpu/{m}", f"pipeline CPU per frame <= {FAST_MODEL_CPU_GOAL} x "
                         f"bare, {m}, 2 threads", ratio,
                         "n/a" if ratio is None else f"{ratio:.3f}{full_ratio}"))
    for r in fig.get("motion", []):
        if "skipped" in r:
            continue
        missed = "" if not r["episodes_missed"] else " (**episodes missed**)"
        rows.append((f"motion/{r['model']}", f"motion CPU on / off <= {MOTION_GOAL}, "
                     f"{r['model']}", r["cpu_ratio"], f"{r['cpu_ratio']:.3f}, "
                     f"{r['episodes_reported']} of {len(r['episodes'])} episodes reported"
                     f"{missed}"))
        raw = r.get("raw")
        if raw:
            raw_missed = "" if not raw["episodes_missed"] else " (**episodes missed**)"
            rows.append((f"motion_raw/{r['model']}", f"motion CPU on / off <= {MOTION_GOAL}, "
                         f"{r['model']}, the same frames from a raw YUYV camera",
                         raw["cpu_ratio"], f"{raw['cpu_ratio']:.3f}, "
                         f"{raw['episodes_reported']} of {len(r['episodes'])} episodes "
                         f"reported{raw_missed}"))
    for r in fig.get("latency", []):
        if "skipped" in r:
            continue
        a = r["added_over_invoke"]
        rows.append((f"latency/{r['model']}", f"added latency / invoke (no goal), {r['model']}",
                     None, f"p50 {a['p50']:.2f}, p99 {a['p99']:.2f}"))
    for r in fig.get("threads_auto", []):
        ratio = r.get("picked_over_best")
        rows.append((f"auto/{r['model']}", "threads: auto within 5% of the best fixed count, "
                     f"pipeline results/s of the count it settles on, {r['model']}", ratio,
                     "n/a" if ratio is None else
                     f"{ratio:.3f} (auto settled on {r['picked']}, best fixed "
                     f"{r['best_fixed']}; {_auto_detail(r)})"))
    mem = fig.get("memory", {})
    if mem and "growth_mb" in mem:
        rows.append(("memory", f"RSS growth within 2 MB over {mem['seconds']} s",
                     abs(mem["growth_mb"]), f"{mem['growth_mb']:+.2f} MB "
                     f"(peak {mem['peak_rss_mb']} MB)"))
    return rows


def _auto_detail(r: dict[str, Any]) -> str:
    """fps of each run, and the picks at load -> in the pipeline, per round."""
    fps = ", ".join(f"{k.replace('fixed_', '')} {v:g}" for k, v in r.get("fps", {}).items())
    picks = ", ".join(f"{p['load']}->{p['pipeline']}" for p in r.get("picks", []))
    lo, hi = r.get("picked_over_best_range", [None, None])
    spread = f", rounds {lo:.2f}-{hi:.2f}" if lo is not None else ""
    own = r.get("auto_over_same_count")
    own_text = "" if own is None else (
        f"; auto's own run / that count's fixed run {own:.3f} "
        f"({r['auto_over_same_count_range'][0]:.2f}-{r['auto_over_same_count_range'][1]:.2f})")
    return f"fps {fps}{spread}; load->pipeline pick per round {picks}{own_text}"


def _goal_verdict(key: str, value: float | None) -> str:
    kind = key.split("/", 1)[0]
    limits = {"pb": (0.90, True), "ps": (1.0, True), "fast_pb": (FAST_MODEL_GOAL, True),
              "fast_cpu": (FAST_MODEL_CPU_GOAL, False), "motion": (MOTION_GOAL, False),
              "motion_raw": (MOTION_GOAL, False),
              "memory": (2.0, False), "auto": (0.95, True)}
    if kind not in limits:
        return "info"
    goal, higher = limits[kind]
    return _verdict(value, goal, higher)


def _summary(fig: dict[str, Any]) -> list[str]:
    """One line per goal: the figure, whether it meets the goal, and the previous run's."""
    prev = fig.get("previous") or {}
    before = {k: text for k, _, _, text in _goal_rows(prev)} if prev else {}
    head = "| goal | figure | verdict |"
    if prev:
        head += f" previous run ({prev.get('date', '?')}) |"
    lines = ["## Against the goals", "", head, "|---|---|---|" + ("---|" if prev else "")]
    for key, goal, value, text in _goal_rows(fig):
        row = f"| {goal} | {text} | {_goal_verdict(key, value)} |"
        if prev:
            row += f" {before.get(key, '–')} |"
        lines.append(row)
    if prev:
        lines += ["", "The previous run's figures are those of the BENCHMARKS.md this run "
                  "replaced (its JSON), measured then under its own load; the ratios within "
                  "each run are what compare."]
    return [*lines, ""]


def _throughput(rows: list[dict[str, Any]], notes: dict[str, Any]) -> list[str]:
    out = ["## Throughput: pipeline vs bare invoke vs the sequential script", "",
           "640x480 MJPEG clip, unpaced. *bare*: `invoke()` back to back; *sequential*: read -> "
           "resize -> invoke -> decode -> policy -> JSON, one after the other, publishing "
           "nothing; *pipeline*: edge-agent's three threads, publishing every result through "
           "the policy, the egress guard, the SQLite outbox and paho to a local mosquitto "
           "(QoS 1); *untuned*: the pipeline without its OpenCV-threads/GIL-interval tuning. "
           "Same interpreter and threads in every run. The pipeline decodes each MJPEG packet "
           "only as large as the model's input needs (JPEG DCT scaling; 1/2 for BlazeFace's "
           "192x192, in full for the 300x300 and 320x320 inputs); for such a model the "
           "pipeline with full decodes (before) ran in the same rounds: its figures follow "
           "*full decodes* in the row.", ""]
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
        full_pb = (f"; full decodes: {_r(r['full_decode_over_bare'])}"
                   if "full_decode_over_bare" in r else "")
        full_cpu = (f"; full decodes: {cpu['pipeline_full_decode']:.1f}"
                    if "pipeline_full_decode" in cpu else "")
        out.append(
            f"| {r['model']} | {r['threads']} | {r['fps']['bare']:.1f} | {_r(pb)} {v1}{full_pb} | "
            f"{_r(ps)} {v2} | {_r(r['sequential_over_bare'])} | {unt} | "
            f"{cpu.get('bare', 0):.1f}, {cpu.get('sequential', 0):.1f}, "
            f"{cpu.get('pipeline', 0):.1f}{full_cpu} |")
    out.append("")
    return out


def _result_path(fig: dict[str, Any], previous: dict[str, Any]) -> list[str]:
    out = ["## The result path: CPU µs per result by stage", ""]
    if not fig:
        return [*out, "_skipped_", ""]
    before = (previous.get("result_path") or {}).get("us", {})
    out += [f"`benchmarks/result_path.py`: {fig['results_per_round']} BlazeFace-like results "
            f"({fig['result_bytes']} bytes of JSON each, 2 faces with key points) per stage and "
            f"round, {fig['rounds']} rounds alternating the stages, thread CPU time (paho: "
            "process CPU, its network thread included, until every PUBACK is back); median "
            f"(lowest–highest round). Load average after: {fig['load_avg']}."
            + (f" {fig['note']}" if fig.get("note") else ""), "",
            "| stage | CPU µs per result | previous run |", "|---|---|---|"]
    names = {"policy": "policy (`PrivacyPolicy.result`)",
             "guard": "egress guard up to the outbox (JSON, size, schema, render)",
             "schema": "of which the schema check", "outbox": "SQLite outbox append",
             "outbox_group_1": "outbox, group commit, 1 message per transaction",
             "outbox_group_4": "outbox, group commit, 4 messages per transaction",
             "outbox_group_16": "outbox, group commit, 16 messages per transaction",
             "paho": "paho publish, QoS 1, to PUBACK"}
    total = 0.0
    for key, label in names.items():
        v = fig["us"].get(key)
        if v is None:
            continue
        if key == "outbox" or not key.startswith(("schema", "outbox")):
            total += v["median"]
        prev = before.get(key)
        out.append(f"| {label} | {v['median']:.0f} ({v['min']:.0f}–{v['max']:.0f}) | "
                   f"{prev['median'] if prev else 'not measured'} |")
    out += [f"| total (schema counted once, outbox without group commit) | {total:.0f} | |", ""]
    return out


def _motion(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Motion gating: CPU seconds with the gate / without "
           f"(goal <= {MOTION_GOAL})", ""]
    if not rows:
        return [*out, "_skipped_", ""]
    out += ["| model | clip | CPU s off | CPU s on | on / off | on / off, full decode "
            "(before) | frames inferred on / off | perfect gate (moving frames) | "
            "episodes reported | raw YUYV camera: CPU s off, on | raw: on / off | "
            "raw: inferred on / off, episodes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['model']} | _{r['skipped']}_ | | | | | | | | | | |")
            continue
        raw = r.get("raw")
        raw_text = "| – | – | – |"
        if raw:
            raw_text = (f"| {r['cpu_s']['raw_gate_off']}, {r['cpu_s']['raw_gate_on']} | "
                        f"{_r(raw['cpu_ratio_rounds'])} "
                        f"{_verdict(raw['cpu_ratio'], MOTION_GOAL, False)} | "
                        f"{raw['inferred']['gate_on']} / {raw['inferred']['gate_off']}, "
                        f"{raw['episodes_reported']} of {len(r['episodes'])} |")
        full = r.get("cpu_ratio_full_decode_rounds")
        full_text = _r(full) if full else "–"
        on = r.get("cpu_ratio_rounds")
        on_text = _r(on) if on else f"{r['cpu_ratio']:.3f}"
        out.append(
            f"| {r['model']} | {r['clip']} | {r['cpu_s']['gate_off']} | {r['cpu_s']['gate_on']} "
            f"| {on_text} {_verdict(r['cpu_ratio'], MOTION_GOAL, False)} | {full_text} | "
            f"{r['inferred']['gate_on']} / {r['inferred']['gate_off']} | "
            f"{r['moving_fraction']:.3f} | {r['episodes_reported']} of {len(r['episodes'])} "
            f"{raw_text}")
    out += ["", "Three runs per round, alternating: gate off; gate on as the pipeline runs it "
            "(each MJPEG packet decoded at 1/4 size by JPEG DCT scaling for the gate, and at "
            "the model's scale only when the gate opens); gate on with every frame decoded in "
            "full first (the pipeline before deferred decoding). The model runs on motion, for "
            "3 frames after it, and on the 30 s heartbeat. An episode counts as reported when "
            "every gated run published a result inside it. *Raw YUYV camera*: two more runs "
            "per round, gate off and gate on, on the same frames handed over as a YUYV "
            "camera's raw buffers (read from a file of raw frames written before the runs, "
            "the copy OpenCV makes of a V4L2 buffer); the gate measures a copy subsampled "
            "from the planes and only inferred frames are converted in full; their ratio is "
            "raw on / raw off.", ""]
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
