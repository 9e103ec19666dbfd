"""kill -9 while publishing: a new transport on the same state_dir delivers the rest, no gap.

The publisher runs with the broker up for its first 200 results, frozen (SIGSTOP: the
publisher hands results to it and gets no PUBACK) for the next 100, then killed (SIGKILL, the
connection drops) for the rest, so at the kill the outbox holds both results handed to the
broker and never acknowledged (they must come again marked ``replayed``) and a backlog that
was never sent (first sends, unmarked)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.mqtt.client import MqttTransport
from tests.broker import Mosquitto
from tests.mqtt.conftest import (
    Subscriber,
    agent_config,
    marked,
    result_renderer,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]

PUBLISHER = """
import sys, time
from pathlib import Path
from edge_agent.config import make_config
from edge_agent.mqtt.client import MqttTransport
from tests.mqtt.conftest import result_renderer

state, host, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = make_config(state_dir=str(state), mqtt={"host": host, "port": port})
t = MqttTransport(cfg, state)
t.start()
render = result_renderer("cam", t.boot_id)
topic = t.topics.results("cam")
while True:
    seq = t.publish_durable("cam", topic, render)
    print(seq, flush=True)  # committed to the outbox
    time.sleep(0.002)
"""


def test_sigkill_loses_nothing_and_seq_continues(broker: Mosquitto, tmp_path: Path,
                                                 subscriber_factory: Any) -> None:
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(state), broker.host, str(broker.port)],
        cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    committed = 0
    try:
        deadline = time.monotonic() + 60
        while committed < 400 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed = int(line)
            if committed == 200:  # handed to a broker that does not answer: in flight
                os.kill(broker.proc.pid, signal.SIGSTOP)
            elif committed == 300:  # the connection drops: the rest piles up unsent
                os.kill(broker.proc.pid, signal.SIGKILL)
                broker.proc.wait(5)
                broker.stop()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        proc.stdout.close()
        if broker.proc is not None and broker.proc.poll() is None:
            os.kill(broker.proc.pid, signal.SIGCONT)
    assert committed >= 400
    with sqlite3.connect(state / "outbox.sqlite") as db:
        in_flight = dict(db.execute("SELECT sent, COUNT(*) FROM messages GROUP BY sent"))
    assert in_flight.get(1, 0) >= 1, f"nothing was in flight at the kill: {in_flight}"
    assert in_flight.get(0, 0) >= 1, f"no unsent backlog at the kill: {in_flight}"
    # The broker was killed before it saved anything, so the subscriber's session is gone: until
    # it has subscribed again, the broker would drop what the agent publishes for it.
    subscribed = sub.subscriptions
    broker.start()
    assert wait_until(lambda: sub.subscriptions > subscribed, 30), "subscriber did not return"
    # what the killed process committed but the broker had not acknowledged is in the outbox
    transport = MqttTransport(agent_config(broker, state), state)
    left_over = transport.stats()["outbox_depth"]
    assert left_over >= 150
    transport.start()
    try:
        assert wait_until(lambda: transport.stats()["connected"], 30)
        render = result_renderer("cam", transport.boot_id)
        after = [transport.publish_durable("cam", transport.topics.results("cam"), render)
                 for _ in range(10)]
        wanted = set(range(1, after[-1] + 1))

        def got() -> set[int]:
            return {p["seq"] for p in sub.payloads()}

        assert wait_until(lambda: got() >= wanted, 60), (
            f"missing seqs {sorted(wanted - got())[:50]}; {transport.stats()}")
        assert wait_until(lambda: transport.stats()["outbox_depth"] == 0)
    finally:
        transport.stop(5)
    seqs = {p["seq"] for p in sub.payloads()}
    assert after[0] > committed  # continues after everything the killed process committed
    assert after == list(range(after[0], after[0] + 10))
    assert seqs == set(range(1, after[-1] + 1))  # no gap
    copies: dict[str, list[dict[str, Any]]] = {}
    for p in sub.payloads():
        copies.setdefault(p["id"], []).append(p)
    assert len(copies) == after[-1]  # one id per seq
    assert all(sum(map(marked, cs)) >= len(cs) - 1 for cs in copies.values())
    # what the killed process had handed to the broker comes again, marked
    assert sum(1 for cs in copies.values() if any(map(marked, cs))) >= in_flight[1], in_flight
    boots = {p["boot_id"] for p in sub.payloads()}
    assert len(boots) == 2  # subscribers can tell the restart from a loss
