"""The consumer against a real mosquitto: typed messages once each, gaps, restarts, groups."""

from __future__ import annotations

import json
import os
import select
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.consumer import Consumer, Event, Gap, Item, Restart, Result, Status
from edge_agent.errors import ConfigError
from edge_agent.mqtt.inbound import parse_broker
from tests.broker import Mosquitto, free_port

P = "edge-agent"


def result(device: str, seq: int, boot: str, *, mid: str | None = None, replayed: bool = False,
           labels: tuple[str, ...] = ("person",)) -> dict[str, Any]:
    dets = [{"label": x, "class_id": 0, "score": 0.9, "box": [0.1, 0.1, 0.5, 0.5]}
            for x in labels]
    out: dict[str, Any] = {
        "schema": "edge-agent/result@1", "id": mid or uuid.uuid4().hex, "seq": seq,
        "boot_id": boot, "device": device, "pipeline": "cam", "ts": "2026-12-02T10:00:00.000Z",
        "model": {"name": "m", "version": 1, "sha256": ""},
        "frame": {"index": seq, "width": 320, "height": 240}, "inference_ms": 5.0,
        "detections": dets, "counts": {x: labels.count(x) for x in labels}}
    if replayed:
        out["replayed"] = True
    return out


class Publisher:
    def __init__(self, broker: Mosquitto) -> None:
        self.c = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv311)
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def send(self, topic: str, payload: Any, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.c.publish(topic, data, qos=1, retain=retain)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def take(consumer: Consumer, n: int) -> list[Item]:
    out: list[Item] = []
    while len(out) < n:
        item = consumer.get(10)
        assert item is not None, f"only {len(out)} of {n} items: {out}"
        out.append(item)
    return out


def test_once_each_with_gap_and_restart(broker: Mosquitto) -> None:
    pub = Publisher(broker)
    try:
        pub.send(f"{P}/dev1/status", {"device": "dev1", "state": "online", "boot_id": "b1",
                                      "ts": "2026-12-02T10:00:00.000Z"}, retain=True)
        with Consumer(f"{broker.host}:{broker.port}", devices=["dev1"]) as c:
            first = result("dev1", 1, "b1")
            for m in (first, result("dev1", 2, "b1"), {**first, "replayed": True},
                      result("dev1", 5, "b1"), result("dev1", 6, "b2")):
                pub.send(f"{P}/dev1/results/cam", m)
            pub.send(f"{P}/dev1/results/cam", b"not json")
            pub.send(f"{P}/dev1/events/cam", {
                "schema": "edge-agent/event@1", "id": "e1", "seq": 1, "boot_id": "b2",
                "device": "dev1", "pipeline": "cam", "ts": "2026-12-02T10:00:01.000Z",
                "event": "leave", "track_id": 3, "label": "person", "class_id": 0,
                "dwell_s": 4.5})
            items = take(c, 8)
            stats = c.stats()
        assert isinstance(items[0], Status) and items[0].boot_id == "b1"
        results = [i for i in items if isinstance(i, Result)]
        assert [r.seq for r in results] == [1, 2, 5, 6]
        assert results[0].detections[0].label == "person" and results[0].counts == {"person": 1}
        gap = next(i for i in items if isinstance(i, Gap))
        assert (gap.first, gap.last, gap.missing) == (3, 4, 2)
        restart = next(i for i in items if isinstance(i, Restart))
        assert (restart.previous_boot_id, restart.boot_id, restart.lost) == ("b1", "b2", 0)
        event = next(i for i in items if isinstance(i, Event))
        assert (event.event, event.dwell_s, event.track_id) == ("leave", 4.5, 3)
        assert stats.duplicates == 1 and stats.malformed == 1 and stats.delivered == 5
        assert stats.gaps == 1 and stats.missing == 2 and stats.restarts == 1
    finally:
        pub.close()


def test_groups_follow_the_devices_inventory(broker: Mosquitto) -> None:
    pub = Publisher(broker)
    try:
        pub.send(f"{P}/a/inventory", {"device": "a", "groups": ["lobby"]}, retain=True)
        pub.send(f"{P}/b/inventory", {"device": "b", "groups": ["floor-2"]}, retain=True)
        with Consumer(f"{broker.host}:{broker.port}", groups=["lobby"], status=False) as c:
            pub.send(f"{P}/b/results/cam", result("b", 1, "x"))
            pub.send(f"{P}/a/results/cam", result("a", 1, "y"))
            got = take(c, 1)
            assert c.get(0.5) is None
            assert c.stats().filtered == 1
        assert isinstance(got[0], Result) and got[0].device == "a"
    finally:
        pub.close()


def test_unreachable_broker_is_a_clear_error() -> None:
    c = Consumer(f"127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionError, match="cannot subscribe"):
        c.start(timeout=1.0)


@pytest.mark.parametrize(("text", "expected"), [
    ("h", ("h", 1883)), ("h:1", ("h", 1)), ("[::1]:8883", ("::1", 8883)), ("::1", ("::1", 1883))])
def test_parse_broker(text: str, expected: tuple[str, int]) -> None:
    assert parse_broker(text) == expected


@pytest.mark.parametrize("text", ["", ":1883", "h:0", "h:x", "h:70000"])
def test_parse_broker_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="--broker"):
        parse_broker(text)


def test_another_schema_version_is_refused_clearly() -> None:
    from edge_agent.consumer import MessageFormatError, parse_result

    data = result("d", 1, "b")
    assert parse_result(json.dumps(data).encode()).seq == 1
    data["schema"] = "edge-agent/result@2"
    with pytest.raises(MessageFormatError, match="'edge-agent/result@2' is not "
                       "'edge-agent/result@1'"):
        parse_result(json.dumps(data).encode())


def test_the_docs_example_script_works(broker: Mosquitto, tmp_path: Path) -> None:
    """The ten-line example of docs/consumers.md, run as written (broker address swapped)."""
    import re
    import subprocess
    import sys

    from tests.conftest import REPO

    doc = (REPO / "docs" / "consumers.md").read_text()
    code = re.search(r"```python\n(.*?)```", doc, re.S)
    assert code is not None
    script = code.group(1).replace("localhost:1883", f"{broker.host}:{broker.port}")
    assert len(script.strip().splitlines()) <= 12, script
    path = tmp_path / "example.py"
    path.write_text(script)
    proc = subprocess.Popen([sys.executable, "-u", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pub = Publisher(broker)
    out = b""
    try:
        deadline = time.monotonic() + 30
        probe = result("door-cam", 1, "b0")
        probe["pipeline"] = "probe"
        while time.monotonic() < deadline and b"probe" not in out:  # until it is subscribed
            pub.send(f"{P}/door-cam/results/probe", probe)
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                out += os.read(fd, 65536)
        for s in (1, 4):  # a gap of 2..3
            pub.send(f"{P}/door-cam/results/cam", result("door-cam", s, "b1"))
        while time.monotonic() < deadline and out.count(b"\n") < 4:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                out += os.read(fd, 65536)
    finally:
        pub.close()
        proc.kill()
        proc.wait(10)
    lines = out.decode().splitlines()
    assert lines[-3:] == ["door-cam cam 1 {'person': 1}", "lost 2 messages: door-cam cam 2 3",
                          "door-cam cam 4 {'person': 1}"], lines
