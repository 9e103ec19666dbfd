"""``edge-agent bench``: the three runs complete on a real model and report every figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_agent.bench import cmd_bench, format_table, format_targets, run_bench
from edge_agent.default_models import ensure_default_models
from tests.delegate import TestDelegate


@pytest.fixture
def face_model() -> str:
    return str(ensure_default_models()["face_detection_full_range_sparse"])


def test_run_bench_reports_every_figure(face_model: str) -> None:
    r = run_bench(face_model, threads=1, frames=12, rounds=2)
    for run in ("bare", "sequential", "pipeline"):
        assert r[run]["fps"] > 0
        assert r[run]["cpu_s_per_frame"] > 0
    assert r["pipeline"]["ratio_to_bare"] > 0 and r["pipeline"]["ratio_to_sequential"] > 0
    assert {"capture", "preprocess", "invoke", "decode", "policy", "publish"} <= set(
        r["pipeline"]["stages_ms"])
    assert r["pipeline"]["first_result_ms"] > 0
    assert r["peak_rss_mb"] > 0 and r["threads"] == 1
    assert "pipeline" in format_table(r)


def test_figures_and_ratios_come_from_the_same_round(face_model: str) -> None:
    """The printed ratios are the printed fps divided by each other (one median round), an
    even number of rounds runs one more, and the header names the frames each run got."""
    r = run_bench(face_model, threads=1, frames=20, rounds=2)
    assert r["rounds"] == 3 and r["frames_per_run"] == 20 // 3
    assert all(len(v) == 3 for v in r["rounds_fps"].values())
    mid = r["median_round"] - 1
    bare = r["rounds_fps"]["bare"]
    assert sorted(bare)[1] == bare[mid]
    for run in ("bare", "sequential", "pipeline"):
        assert r[run]["fps"] == r["rounds_fps"][run][mid]
    assert r["sequential"]["ratio_to_bare"] == round(r["sequential"]["fps"] / r["bare"]["fps"], 3)
    assert r["pipeline"]["ratio_to_bare"] == round(r["pipeline"]["fps"] / r["bare"]["fps"], 3)
    assert r["pipeline"]["ratio_to_sequential"] == round(
        r["pipeline"]["fps"] / r["sequential"]["fps"], 3)
    header = format_table(r).splitlines()[2]
    assert f"3 alternating rounds of {20 // 3} frames per run" in header
    assert f"round {r['median_round']}" in header


def test_cmd_bench_json_on_a_video_file(face_model: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from edge_agent.sources.synthetic import write_clip

    clip = tmp_path / "clip.avi"
    write_clip(clip, seconds=1.0, fps=10, episodes=[(0.2, 0.8)])
    args = argparse.Namespace(model=face_model, source=str(clip), threads=1, delegate=None,
                              delegate_option=None, decoder="auto", labels=None, frames=10,
                              rounds=1, json=True)
    assert cmd_bench(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == str(clip) and out["pipeline"]["fps"] > 0


def test_bench_measures_each_target_alone(face_model: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          test_delegate: TestDelegate) -> None:
    short = str(Path(face_model).with_name("face_detection_short_range.tflite"))
    args = argparse.Namespace(
        model=short, source=None, threads=1, delegate=None, decoder="auto", labels=None,
        frames=10, rounds=1, json=True,
        target=["cpu", str(test_delegate.path), str(test_delegate.path.with_name("no.so"))],
        delegate_option=[f"{k}={v}" for k, v in test_delegate.options().items()])
    before = test_delegate.invocations()
    assert cmd_bench(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["targets"]) == ["cpu", "edge_test_delegate", "no"]
    assert r["targets"]["edge_test_delegate"]["delegate"] == "edge_test_delegate"
    assert r["targets"]["cpu"]["delegate"] is None
    assert "no such file" in r["targets"]["no"]["error"]
    assert r["baseline"] == "cpu" and r["ratio_to_baseline"]["cpu"]["bare"] == 1.0
    assert r["ratio_to_baseline"]["edge_test_delegate"]["bare"] > 0
    assert test_delegate.invocations() - before >= 10 * 21  # it really ran the claimed nodes
    assert "bare / cpu" in format_targets(r)
