"""``edge-agent bench``: the three runs complete on a real model and report every figure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edge_agent.bench import cmd_bench, format_table, run_bench
from edge_agent.default_models import default_models_dir


@pytest.fixture
def face_model() -> str:
    path = default_models_dir() / "face_detection_full_range_sparse.tflite"
    if not path.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    return str(path)


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
