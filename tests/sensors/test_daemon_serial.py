"""The whole daemon on a serial sensor: a pty feeds x values (and garbage) to
hello_world_int8; a subscriber receives y = sin(x) for every good line and nothing for the
bad ones, and the agent stops cleanly."""

from __future__ import annotations

import os
import threading
import tty
from pathlib import Path

import numpy as np
import pytest

from tests.broker import Mosquitto
from tests.conftest import need_module, shared_model
from tests.e2e import agentproc

need_module("serial")


@pytest.mark.slow
def test_serial_pty_through_the_daemon(tmp_path: Path, broker: Mosquitto) -> None:
    model = shared_model("sensor/hello_world_int8.tflite")
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo or line editing while nobody has the port open yet
    port = os.ttyname(slave)
    config = agentproc.write_config(tmp_path / "config.yaml", {
        "device_id": "pump-1",
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": broker.host, "port": broker.port},
        "metrics": {"prometheus": {"enabled": False}},
        "pipelines": [{
            "name": "sine",
            "source": {"type": "sensor", "uri": f"serial://{port}?baud=9600", "window": 1},
            "model": {"path": str(model), "decoder": "raw"},
        }],
    })
    inbox = agentproc.Inbox()
    sub = agentproc.subscribe(broker.host, broker.port, ["edge-agent/pump-1/#"], inbox)
    agent = agentproc.AgentProcess(config)
    xs = np.round(np.linspace(0.1, 6.1, 25), 4)
    def results_in(messages: list[tuple[str, bytes, bool]]) -> int:
        # called with the inbox's lock held: count here, never through inbox.count()
        return sum(1 for topic, _, _ in messages if topic.endswith("/results/sine"))

    try:
        # pyserial flushes what was written before the agent opened the port: probe with x=0
        # until a result shows the port is being read
        ready = threading.Event()
        for _ in range(100):
            os.write(master, b"\n0\n")
            if inbox.wait_for(lambda m: results_in(m) > 0, 0.3):
                ready.set()
                break
        assert ready.is_set(), agent.log()
        ready.wait(1.0)  # let probes already written come through
        before = inbox.count("/results/sine")
        # a live source keeps only the newest windows when the pipeline is busy, so feed at a
        # sensor's pace: each good line (after some garbage) once the previous one is through
        for i, x in enumerate(xs):
            junk = ["garbage", "1,2", "nan", "\x00\x01", "{broken"] if i % 5 == 0 else []
            os.write(master, ("\n".join([*junk, f"{x}"]) + "\n").encode())
            want = before + i + 1
            assert inbox.wait_for(lambda m, w=want: results_in(m) >= w, 30), agent.log()
        ready.wait(0.5)
        results = inbox.json("/results/sine")
        assert len(results) == before + len(xs)  # one per good line, none for the bad ones
        ours = results[before:]
        ys = np.array([r["values"][0] for r in ours])
        assert np.abs(ys - np.sin(xs)).max() < 0.12
        indexes = [r["frame"]["index"] for r in ours]
        assert indexes == list(range(indexes[0], indexes[0] + len(xs)))
    finally:
        rc = agent.terminate()
        sub.stop()
        os.close(master)
        os.close(slave)
    assert rc == 0, agent.log()
