"""BENCHMARKS.md says truthfully how its figures were made (benchmarks/report.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import render


def _fig(memory: dict[str, Any], load: list[float]) -> dict[str, Any]:
    return {"command": "python -m benchmarks", "date": "2026-12-02 16:00 UTC",
            "duration_s": 100.0, "load_at_end": load,
            "machine": {"cpu": "x", "cores": 2, "system": "Linux", "python": "3.11",
                        "litert": "2.3.0", "numpy": "2.4.6", "opencv": "5.1.0",
                        "load_at_start": load},
            "memory": memory}


MEM = {"seconds": 120, "fps": 20.0, "peak_rss_mb": 130.0, "rss_after_warmup_mb": 128.0,
       "rss_end_mb": 128.5, "growth_mb": 0.5, "slope_mb_per_10min": 0.1, "cpu_s": 30.0}


def test_a_memory_figure_from_another_run_is_not_called_same_run() -> None:
    text = render(_fig({**MEM, "source": "an earlier run: `python -m benchmarks.memory`"},
                       [0.1, 0.1, 0.1]))
    head = text.split("## Against the goals")[0]
    assert "The memory section is **not** from this run" in head
    assert "measured by this run" not in head
    assert "shared with other work" not in head


def test_a_measured_memory_figure_and_a_loaded_machine_are_said() -> None:
    text = render(_fig(MEM, [3.5, 2.0, 1.5]))
    head = text.split("## Against the goals")[0]
    assert "measured by this run in a separate daemon process" in head
    assert "the machine was shared with other work during this run" in head
