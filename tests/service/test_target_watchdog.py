"""`edge-agent run` with a delegate that wedges: the daemon moves to the CPU within the invoke
deadline, keeps publishing, and keeps feeding the systemd watchdog; when the delegate comes back
it moves back. Real mosquitto, the real test delegate (tests/delegate), a fake systemd socket.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.default_models import default_models_dir
from tests.broker import Mosquitto
from tests.delegate import TestDelegate
from tests.e2e.agentproc import Inbox, subscribe
from tests.service.test_agent_notify import READY_TIMEOUT_S, FakeSystemd, _log, _spawn, _stop

pytestmark = [pytest.mark.slow]

STALL_S = 3.0  # the pipeline's stall_timeout_s: the watchdog is fed only while stages are fresh


def _wait_metrics(tmp_path: Path, lines: list[str]) -> None:
    """Wait until the agent's /metrics shows every line (its URL is in the log)."""
    m = re.search(r"Prometheus metrics on (http://\S+/metrics)",
                  (tmp_path / "agent.log").read_text(errors="replace"))
    assert m, "no metrics URL logged"
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        with urllib.request.urlopen(m.group(1), timeout=10) as resp:
            text = resp.read().decode()
        if all(line in text for line in lines):
            return
        time.sleep(0.5)
    raise AssertionError(f"metrics never showed {lines}:\n{text[-2000:]}")


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    s = FakeSystemd(tmp_path / "notify.sock")
    try:
        yield s
    finally:
        s.close()


def test_a_hung_delegate_neither_stalls_the_daemon_nor_trips_the_watchdog(
        tmp_path: Path, broker: Mosquitto, systemd: FakeSystemd,
        test_delegate: TestDelegate) -> None:
    model = default_models_dir() / "face_detection_short_range.tflite"
    if not model.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    opts = ", ".join(f"{k}: '{v}'" for k, v in test_delegate.options().items())
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""
device_id: target-test
state_dir: {tmp_path / "state"}
mqtt: {{host: {broker.host}, port: {broker.port}, stats_interval_s: 1}}
metrics: {{prometheus: {{bind: 127.0.0.1, port: 0}}}}
logging: {{level: info, format: text}}
updates: {{enabled: false}}
audit: {{enabled: false}}
pipelines:
  - name: door
    source: {{type: synthetic, fps: 10, width: 320, height: 240}}
    stall_timeout_s: {STALL_S}
    model:
      path: {model}
      threads: 1
      invoke_timeout_s: 1.0
      reprobe_s: 0.5
      reprobe_max_s: 1.0
      targets: [{{delegate: '{test_delegate.path}', name: vendor, options: {{{opts}}}}}, cpu]
""")
    inbox = Inbox()
    sub = subscribe(broker.host, broker.port, ["edge-agent/target-test/#"], inbox)
    proc = _spawn(cfg, systemd.path, tmp_path)
    try:
        systemd.wait_for("READY=1", READY_TIMEOUT_S, proc)
        assert inbox.wait_for(lambda m: sum("/results/" in t for t, _, _ in m) >= 5, 60)
        test_delegate.set("hang")
        hung_at = time.monotonic()
        # watchdog pings continue through the hang: never a silence as long as the stall limit
        last = time.monotonic()
        while time.monotonic() - hung_at < 3 * STALL_S:
            fields = systemd.next(STALL_S)
            assert fields is not None, "the watchdog pings stopped during the hang"
            if "WATCHDOG=1" in fields:
                gap, last = time.monotonic() - last, time.monotonic()
                assert gap < STALL_S, f"no watchdog ping for {gap:.1f}s"
        assert proc.poll() is None
        assert inbox.wait_for(lambda m: any(b'"target_changed"' in p for _, p, _ in m), 30)
        _wait_metrics(tmp_path, ['edge_agent_target_active{pipeline="door",target="cpu",'
                                 'state="active"} 1',
                                 'edge_agent_target_changes_total{pipeline="door"} 1'])
        n = inbox.count("/results/door")
        assert inbox.wait_for(lambda m: sum("/results/" in t for t, _, _ in m) >= n + 10, 30)
        test_delegate.set("ok")  # the wedge clears; the next probe passes
        assert inbox.wait_for(
            lambda m: sum(b'"target_changed"' in p for _, p, _ in m) >= 2, 60)
        systemd.wait_for("WATCHDOG=1", 10, proc)
    except AssertionError as exc:
        _stop(proc)
        sub.stop()
        raise AssertionError(f"{exc}\n--- agent log ---\n{_log(tmp_path)}") from None
    code = _stop(proc)
    sub.stop()
    assert code == 0, _log(tmp_path)
    events = [e for e in inbox.json("/events/door") if e["event"] == "target_changed"]
    assert [(e["from"], e["to"]) for e in events] == [("vendor", "cpu"), ("cpu", "vendor")]
    assert "hung" in events[0]["reason"]
    for kind in ("/results/door", "/events/door"):  # the daemon numbers each topic's own
        seqs = [m["seq"] for m in inbox.json(kind) if not m.get("replayed")]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), kind  # gap-free
    status = [s for s in inbox.json("/status") if s.get("state") == "online"]
    assert any(p.get("target") == "cpu" for s in status for p in s["pipelines"])
