"""MqttTransport against a real mosquitto: durable delivery, outages, sessions, counters."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.mqtt.client import MqttTransport, mark_replayed
from edge_agent.mqtt.outbox import FILENAME, SqliteOutbox
from tests.broker import Mosquitto
from tests.mqtt.conftest import (
    Subscriber,
    agent_config,
    marked,
    result_renderer,
    wait_until,
)


@pytest.mark.parametrize(("protocol", "qos"), [("3.1.1", 1), ("5", 1), ("5", 2), ("3.1.1", 0)])
def test_durable_publish_reaches_subscriber(broker: Mosquitto, tmp_path: Path,
                                            subscriber_factory: Any, protocol: str,
                                            qos: int) -> None:
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    transport = MqttTransport(agent_config(broker, tmp_path, protocol=protocol, qos=qos),
                              tmp_path)
    connected = threading.Event()
    transport.on_connected(connected.set)
    transport.start()
    try:
        assert connected.wait(10)
        topic = transport.topics.results("cam")
        render = result_renderer("cam", transport.boot_id)
        seqs = [transport.publish_durable("cam", topic, render) for _ in range(20)]
        assert seqs == list(range(1, 21))
        assert wait_until(lambda: len(sub.payloads()) >= 20)
        assert wait_until(lambda: transport.stats()["outbox_depth"] == 0)
    finally:
        transport.stop(5)
    got = sub.payloads()
    assert [p["seq"] for p in got] == list(range(1, 21))
    assert not any(p.get("replayed") for p in got)
    stats = transport.stats()
    assert stats["acked"] == (20 if qos else 0)
    assert stats["outbox_depth"] == 0 and stats["connected"] is False


def test_start_is_non_blocking_without_broker_and_nondurable_drops_are_counted(
        tmp_path: Path) -> None:
    dead = Mosquitto(tmp_path / "never-started")
    transport = MqttTransport(agent_config(dead, tmp_path / "state"), tmp_path / "state")
    began = time.monotonic()
    transport.start()
    try:
        assert time.monotonic() - began < 1.0
        transport.publish("edge-agent/test-device/stats", b"{}", qos=0, retain=False)
        seq = transport.publish_durable("cam", transport.topics.results("cam"),
                                        result_renderer("cam", transport.boot_id))
        assert seq == 1
        stats = transport.stats()
        assert stats["connected"] is False
        assert stats["dropped_nondurable"] == 1
        assert stats["outbox_depth"] == 1
    finally:
        transport.stop(1)
    # and the result waits in the outbox for the next start
    again = MqttTransport(agent_config(dead, tmp_path / "state"), tmp_path / "state")
    assert again.stats()["outbox_depth"] == 1
    again.stop(0)


def test_outage_loses_nothing(broker: Mosquitto, tmp_path: Path,
                              subscriber_factory: Any) -> None:
    """Broker down >= 10 s while publishing >= 10 msg/s: every seq arrives, ids stable."""
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    transport = MqttTransport(agent_config(broker, tmp_path), tmp_path)
    connected = threading.Event()
    transport.on_connected(connected.set)
    transport.start()
    stop = threading.Event()
    produced: list[int] = []
    topic = transport.topics.results("cam")
    render = result_renderer("cam", transport.boot_id)

    def produce() -> None:
        while not stop.is_set():
            produced.append(transport.publish_durable("cam", topic, render))
            stop.wait(0.05)  # 20 results/s

    assert connected.wait(10)
    producer = threading.Thread(target=produce, name="test-producer")
    producer.start()
    try:
        time.sleep(1.5)
        broker.stop()
        down_at, produced_at_down = time.monotonic(), len(produced)
        assert wait_until(lambda: not transport.stats()["connected"], 30)
        time.sleep(10.5)
        depth_in_outage = transport.stats()["outbox_depth"]
        rate = (len(produced) - produced_at_down) / (time.monotonic() - down_at)
        broker.start()
        time.sleep(1.5)
        stop.set()
        producer.join()
        last = produced[-1]
        assert wait_until(lambda: {p["seq"] for p in sub.payloads()} >= set(range(1, last + 1)),
                          30)
        assert wait_until(lambda: transport.stats()["outbox_depth"] == 0, 30)
    finally:
        stop.set()
        producer.join()
        transport.stop(5)
    assert rate >= 10  # results per second while the broker was down
    assert depth_in_outage >= 100  # buffered in the outbox
    got = sub.payloads()
    assert produced == list(range(1, len(produced) + 1))
    assert sorted({p["seq"] for p in got}) == produced  # 0 lost
    ids_by_seq: dict[int, set[str]] = defaultdict(set)
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in got:
        ids_by_seq[p["seq"]].add(p["id"])
        copies[p["id"]].append(p)
    assert all(len(ids) == 1 for ids in ids_by_seq.values())  # same id on every resend
    assert len(copies) == len(produced)  # ids unique
    for dupes in copies.values():  # every extra copy is marked
        assert sum(map(marked, dupes)) >= len(dupes) - 1
    assert transport.stats()["reconnects"] >= 1
    # every resend the transport made (and the broker acknowledged) reached the subscriber
    # marked: the check above covers what happened, this one that it was seen (whether a
    # broker stop leaves messages in flight is up to timing; the SIGSTOP test below forces it)
    assert sum(1 for p in got if p.get("replayed")) >= transport.stats()["replayed"]


def test_unacked_messages_are_replayed_with_the_same_id(broker: Mosquitto, tmp_path: Path,
                                                        subscriber_factory: Any) -> None:
    # messages stored and handed out once, never acknowledged: a new transport resends them
    # marked as replayed
    dead = Mosquitto(tmp_path / "dead")
    first = MqttTransport(agent_config(dead, tmp_path), tmp_path)
    render = result_renderer("cam", first.boot_id)
    for _ in range(3):
        first.publish_durable("cam", first.topics.results("cam"), render)
    first.outbox.mark_sent(m.rowid for m in first.outbox.pending())
    ids = [m.id for m in first.outbox.pending()]
    first.stop(0)
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    second = MqttTransport(agent_config(broker, tmp_path), tmp_path)
    second.start()
    try:
        assert wait_until(lambda: len(sub.payloads()) >= 3)
    finally:
        second.stop(5)
    got = sub.payloads()
    assert [p["id"] for p in got] == ids
    assert all(p["replayed"] is True for p in got)
    assert second.stats()["replayed"] == 3


def test_commands_sent_while_offline_arrive_after_restart(broker: Mosquitto,
                                                         tmp_path: Path) -> None:
    cfg = agent_config(broker, tmp_path)
    received: list[tuple[str, bytes]] = []
    transport = MqttTransport(cfg, tmp_path)
    subscribed = threading.Event()
    transport.subscribe(transport.topics.cmd_filter(), lambda t, p: received.append((t, p)))
    transport.on_connected(subscribed.set)
    transport.start()
    assert subscribed.wait(10)
    time.sleep(0.3)  # SUBACK
    transport.stop(2)

    op = paho.Client(CallbackAPIVersion.VERSION2, client_id="operator")
    op.connect(broker.host, broker.port)
    op.loop_start()
    info = op.publish(transport.topics.cmd("restart"), b'{"request_id": "r1"}', qos=1)
    info.wait_for_publish(5)
    op.disconnect()
    op.loop_stop()

    again = MqttTransport(cfg, tmp_path)
    again.subscribe(again.topics.cmd_filter(), lambda t, p: received.append((t, p)))
    again.start()
    try:
        assert wait_until(lambda: len(received) == 1)
    finally:
        again.stop(2)
    assert received == [("edge-agent/test-device/cmd/restart", b'{"request_id": "r1"}')]


def test_on_connected_runs_after_every_reconnect(broker: Mosquitto, tmp_path: Path,
                                                 subscriber_factory: Any) -> None:
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/status")
    transport = MqttTransport(agent_config(broker, tmp_path), tmp_path)
    calls: list[float] = []

    def announce() -> None:
        calls.append(time.monotonic())
        transport.publish(transport.topics.status(), b'{"state": "online"}', qos=1, retain=True)

    transport.on_connected(announce)
    transport.set_will(transport.topics.status(), b'{"state": "offline"}')
    transport.start()
    try:
        assert wait_until(lambda: len(calls) == 1)
        broker.restart()
        assert wait_until(lambda: len(calls) == 2, 15)
        assert wait_until(lambda: transport.stats()["reconnects"] == 1)
    finally:
        transport.stop(2)
    assert wait_until(lambda: len(sub.payloads()) >= 2)
    assert sub.payloads()[-1] == {"state": "online"}


def test_results_and_events_count_separately(tmp_path: Path) -> None:
    dead = Mosquitto(tmp_path / "dead")
    transport = MqttTransport(agent_config(dead, tmp_path), tmp_path)
    render = result_renderer("cam", transport.boot_id)
    results, events = transport.topics.results("cam"), transport.topics.events("cam")
    got = [transport.publish_durable("cam", t, render)
           for t in (results, events, results, events, results)]
    assert got == [1, 1, 2, 2, 3]
    assert transport.last_seq("cam", results) == 3
    transport.stop(0)


def test_outbox_bounds_are_reported_in_stats(tmp_path: Path) -> None:
    dead = Mosquitto(tmp_path / "dead")
    cfg = agent_config(dead, tmp_path, outbox={"max_messages": 10})
    transport = MqttTransport(cfg, tmp_path)
    for _ in range(25):
        transport.publish_durable("cam", transport.topics.results("cam"),
                                  result_renderer("cam", transport.boot_id))
    stats = transport.stats()
    transport.stop(0)
    assert stats["outbox_depth"] == 10 and stats["outbox_dropped"] == 15
    assert [m.seq for m in SqliteOutbox(tmp_path / "outbox.sqlite", cfg.mqtt.outbox).pending()
            ] == list(range(16, 26))


def test_mark_replayed() -> None:
    assert mark_replayed(b'{"a": 1}') == b'{"a":1,"replayed":true}'
    assert mark_replayed(b"\xff\xd8jpeg") == b"\xff\xd8jpeg"
    assert mark_replayed(b"[1]") == b"[1]"


@pytest.mark.allow_threads
# the test kills paho's network thread on purpose: its traceback is the expected input
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_network_thread_is_restarted_and_nothing_is_lost(
        broker: Mosquitto, tmp_path: Path, subscriber_factory: Any) -> None:
    """paho's loop thread ends on an unexpected exception (the chaos run saw an OSError from
    ``time.sleep`` in its reconnect wait); the pump restarts it and the backlog drains."""
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    transport = MqttTransport(agent_config(broker, tmp_path), tmp_path)
    client = transport._client  # paho's own client: the failure is inside paho
    real_wait = client._reconnect_wait
    failed = threading.Event()

    def failing_wait() -> None:
        if not failed.is_set():
            failed.set()
            raise OSError(22, "Invalid argument")
        real_wait()

    client._reconnect_wait = failing_wait  # type: ignore[method-assign]
    connected = threading.Event()
    transport.on_connected(connected.set)
    transport.start()
    try:
        assert connected.wait(10)
        broker.stop()  # the disconnect makes paho wait before reconnecting: it fails there
        assert wait_until(lambda: failed.is_set(), 30)
        render = result_renderer("cam", transport.boot_id)
        seqs = [transport.publish_durable("cam", transport.topics.results("cam"), render)
                for _ in range(5)]
        broker.start()
        assert wait_until(lambda: transport.stats()["network_restarts"] == 1, 30)
        assert wait_until(lambda: len({p["seq"] for p in sub.payloads()}) >= 5, 20)
    finally:
        transport.stop(5)
    assert seqs == [1, 2, 3, 4, 5]


def test_frozen_broker_forces_a_reconnect_and_the_resent_copies_are_marked(
        broker: Mosquitto, tmp_path: Path, subscriber_factory: Any) -> None:
    """A reconnect in the same process: results handed to a broker that froze (SIGSTOP) are
    never acknowledged; after the keepalive gives up and the broker thaws (SIGCONT), the
    transport resends them with the same id and ``"replayed": true``."""
    assert broker.proc is not None
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    transport = MqttTransport(agent_config(broker, tmp_path, keepalive=5), tmp_path)
    connected = threading.Event()
    transport.on_connected(connected.set)
    transport.start()
    topic = transport.topics.results("cam")
    render = result_renderer("cam", transport.boot_id)
    frozen = False
    try:
        assert connected.wait(10)
        before = [transport.publish_durable("cam", topic, render) for _ in range(5)]
        assert wait_until(lambda: transport.stats()["acked"] == 5)
        os.kill(broker.proc.pid, signal.SIGSTOP)
        frozen = True
        during = [transport.publish_durable("cam", topic, render) for _ in range(5)]
        # handed to paho (written to the frozen broker's socket), never acknowledged
        assert wait_until(lambda: transport.stats()["published"] >= 10, 30)
        assert transport.stats()["acked"] == 5
        # paho's keepalive (5 s) notices the silence and drops the connection
        assert wait_until(lambda: not transport.stats()["connected"], 30)
        os.kill(broker.proc.pid, signal.SIGCONT)
        frozen = False
        assert wait_until(lambda: transport.stats()["reconnects"] >= 1, 40)
        assert wait_until(lambda: transport.stats()["outbox_depth"] == 0, 20)
        assert wait_until(lambda: {p["seq"] for p in sub.payloads()} >= set(before + during),
                          20)
    finally:
        if frozen:
            os.kill(broker.proc.pid, signal.SIGCONT)
        transport.stop(5)
    st = transport.stats()
    assert st["replayed"] >= len(during), st  # the resends happened (not a vacuous check)
    got = sub.payloads()
    first = {p["seq"]: p for p in got if p["seq"] in before}
    assert not any(p.get("replayed") for p in first.values())
    copies: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in got:
        copies[p["seq"]].append(p)
    for seq in during:
        assert len({p["id"] for p in copies[seq]}) == 1, copies[seq]  # the same id every time
        # the resend is marked; a copy the broker read from the old connection after thawing
        # may arrive too, unmarked (the first send never is)
        assert any(p.get("replayed") is True for p in copies[seq]), copies[seq]


def test_group_commit_delivers_everything_and_commits_during_an_outage(
        broker: Mosquitto, tmp_path: Path, subscriber_factory: Any) -> None:
    """``outbox.commit_ms``: a burst shares transactions, every seq arrives once and in order,
    and while the broker is down the pump still commits (results never wait in a transaction
    for the broker)."""
    sub: Subscriber = subscriber_factory(broker, "edge-agent/test-device/results/#")
    cfg = agent_config(broker, tmp_path, outbox={"commit_ms": 5})
    transport = MqttTransport(cfg, tmp_path)
    connected = threading.Event()
    transport.on_connected(connected.set)
    transport.start()
    topic = transport.topics.results("cam")
    render = result_renderer("cam", transport.boot_id)

    def stored() -> int:
        other = sqlite3.connect(str(tmp_path / FILENAME))
        try:
            return int(other.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        finally:
            other.close()

    try:
        assert connected.wait(10)
        seqs = [transport.publish_durable("cam", topic, render) for _ in range(50)]
        assert seqs == list(range(1, 51))
        assert wait_until(lambda: len(sub.payloads()) >= 50)
        assert wait_until(lambda: transport.stats()["outbox_depth"] == 0)
        broker.stop()
        assert wait_until(lambda: not transport.stats()["connected"], 30)
        seqs += [transport.publish_durable("cam", topic, render) for _ in range(20)]
        assert wait_until(lambda: stored() == 20, 5)  # committed with no broker to send to
        broker.start()
        assert wait_until(lambda: {p["seq"] for p in sub.payloads()} >= set(seqs), 30)
        assert wait_until(lambda: transport.stats()["outbox_depth"] == 0, 30)
    finally:
        transport.stop(5)
    # every seq arrived (QoS 1: possibly more than once, and a resend may overtake)
    assert {p["seq"] for p in sub.payloads()} == set(range(1, 71))
    assert transport.stats()["outbox_store_failed"] == 0
