"""The rollout's plan and the status summary, without a broker: waves, order, thresholds,
bad options (one clear line, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.commands.fleet import (
    order,
    parse_max_failures,
    parse_waves,
    plan_waves,
    render_table,
    summary,
)
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_waves_are_cumulative_and_end_at_the_whole_group() -> None:
    assert parse_waves("1,10,50,100%") == [0.01, 0.1, 0.5, 1.0]
    assert parse_waves("25%,50%") == [0.25, 0.5, 1.0]
    devices = order(f"d{i}" for i in range(10))
    plan = plan_waves(devices, parse_waves("1,10,50,100%"))
    assert [len(w) for w in plan] == [1, 1, 3, 5]  # each wave at least one device
    assert [d for w in plan for d in w] == devices
    assert plan_waves(order(["a"]), [0.01, 0.5, 1.0]) == [["a"]]


def test_order_is_by_hash_not_by_name_and_stable() -> None:
    names = [f"cam-{i:02d}" for i in range(20)]
    assert order(names) == order(reversed(names))
    assert order(names) != sorted(names)


@pytest.mark.parametrize("bad", ["", "10,5", "0,100", "abc", "50,150"])
def test_bad_waves_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_waves(bad)


def test_max_failures_share_or_count() -> None:
    assert parse_max_failures("10%") == (0.1, True)
    assert parse_max_failures("2") == (2.0, False)
    for bad in ("x", "-1", "150%"):
        with pytest.raises(ConfigError):
            parse_max_failures(bad)


def test_summary_counts_versions_and_devices_behind() -> None:
    def row(d: str, v: int, online: bool = True) -> dict[str, object]:
        return {"device": d, "online": online, "since": None, "last_seen": None,
                "agent_version": "0.1", "groups": [], "outbox_depth": 0,
                "pipelines": {"door": {"model": {"name": "m", "version": v, "sha256": "a"},
                                       "state": "running", "model_state": "active",
                                       "fps": 5.0, "inference_ms_p95": 12.0, "errors": 0}}}
    rows = [row("a", 2), row("b", 1), row("c", 2, online=False)]
    s = summary(rows)
    assert (s["online"], s["total"], s["behind"]) == (2, 3, ["b"])
    assert s["versions"] == {"door:m": {"2": 2, "1": 1}}
    table = render_table(rows, "version")
    assert "2/3 online" in table and "behind: 1 (b)" in table and "OFFLINE" in table


def test_rollout_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "fleet", "rollout", str(bad), "--group", "g",
         "--pipeline", "p", "--broker", "127.0.0.1:1"], capture_output=True, text=True,
        cwd=REPO, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "not JSON" in done.stderr, done.stderr
