"""The collector against a real mosquitto: shared subscriptions, acks only after commit, and a
PostgreSQL outage that loses nothing."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.consumer.collector import Collector
from edge_agent.consumer.store import open_store
from edge_agent.mqtt.inbound import BrokerOptions
from tests.broker import Mosquitto
from tests.consumer.test_consumer import Publisher
from tests.consumer.test_store import payload
from tests.postgres import PostgresCluster

P = "edge-agent"


class Running:
    """A collector on a thread of the test."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.stop = threading.Event()
        self.thread = threading.Thread(target=collector.run, args=(self.stop,),
                                       kwargs={"stats_interval": 3600}, name="collector")
        self.thread.start()
        assert collector.client.subscribed.wait(10), "collector did not subscribe"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def collectors(broker: Mosquitto) -> Iterator[Callable[..., Running]]:
    made: list[Running] = []

    def make(url: str, client_id: str, **kw: object) -> Running:
        c = Collector(BrokerOptions(broker.host, broker.port), open_store(url), prefix=P,
                      client_id=client_id, **kw)  # type: ignore[arg-type]
        made.append(Running(c))
        return made[-1]

    yield make
    for r in made:
        if r.thread.is_alive():
            r.close()


def wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def sqlite_count(path: Path, sql: str = "SELECT count(*) FROM results") -> int:
    with sqlite3.connect(path) as conn:
        try:
            return int(conn.execute(sql).fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def test_two_collectors_on_a_share_store_everything_once(
        tmp_path: Path, broker: Mosquitto, collectors: Callable[..., Running]) -> None:
    db = tmp_path / "r.sqlite"
    a = collectors(f"sqlite:///{db}", "col-a", share="g", batch_size=20)
    b = collectors(f"sqlite:///{db}", "col-b", share="g", batch_size=20)
    pub = Publisher(broker)
    try:
        for s in range(1, 301):
            data = payload(s, device="dev1")
            pub.send(f"{P}/dev1/results/cam", data)
            if s % 50 == 0:  # an agent's resend: the same id again
                pub.send(f"{P}/dev1/results/cam", data)
        pub.send(f"{P}/dev1/results/cam", b"{broken")
        assert wait_until(lambda: sqlite_count(db) == 300, 30), sqlite_count(db)
        assert wait_until(lambda: sqlite_count(db, "SELECT count(*) FROM rejected") == 1, 30)
    finally:
        pub.close()
    a.close()
    b.close()
    sa, sb = a.collector.stats, b.collector.stats
    assert sa.stored > 0 and sb.stored > 0, "the share did not split the messages"
    assert sa.stored + sb.stored == 300 and sa.duplicates + sb.duplicates == 6
    assert sa.acked + sb.acked == 307
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(DISTINCT seq), min(seq), max(seq) FROM results"
                            ).fetchone() == (300, 1, 300)
        assert conn.execute("SELECT count(*) FROM gaps").fetchone() == (0,)


def test_postgres_outage_holds_acks_and_loses_nothing(
        broker: Mosquitto, collectors: Callable[..., Running]) -> None:
    from tests.consumer.conftest import need_postgres

    need_postgres()
    import psycopg

    cluster = PostgresCluster().start()
    try:
        url = cluster.url()
        run = collectors(url, "col-pg", batch_size=50, queue_size=40)
        pub = Publisher(broker)

        def count() -> int:
            try:
                with psycopg.connect(url, connect_timeout=2) as conn:
                    row = conn.execute("SELECT count(*) FROM results").fetchone()
                    return int(row[0]) if row else 0
            except psycopg.Error:
                return -1

        try:
            for s in range(1, 51):
                pub.send(f"{P}/dev1/results/cam", payload(s, device="dev1"))
            assert wait_until(lambda: count() == 50, 30), (count(), run.collector.stats)
            cluster.stop()
            for s in range(51, 251):  # more than the collector's window of 40
                pub.send(f"{P}/dev1/results/cam", payload(s, device="dev1"))
            assert wait_until(lambda: run.collector.stats.db_errors >= 2, 30)
            acked = run.collector.stats.acked
            time.sleep(1.0)
            assert run.collector.stats.acked == acked == 50, "acknowledged during the outage"
            assert run.collector._queue.qsize() <= 40  # bounded memory
            cluster.start()
            assert wait_until(lambda: count() == 250, 60), (count(), run.collector.stats)
        finally:
            pub.close()
        run.close()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM gaps").fetchone() == (0,)
            assert conn.execute("SELECT min(seq), max(seq) FROM results").fetchone() == (1, 250)
    finally:
        cluster.destroy()


def test_retire_drains_the_session_and_leaves_the_share(
        tmp_path: Path, broker: Mosquitto, collectors: Callable[..., Running]) -> None:
    db = tmp_path / "r.sqlite"
    url = f"sqlite:///{db}"
    a = collectors(url, "col-a", share="g")
    b = collectors(url, "col-b", share="g")
    b.close()  # stopped, but its session keeps its place in the share
    pub = Publisher(broker)
    try:
        for s in range(1, 101):
            pub.send(f"{P}/dev1/results/cam", payload(s, device="dev1"))
        assert wait_until(lambda: sqlite_count(db) >= 30, 20)
        time.sleep(1.0)
        assert sqlite_count(db) < 100, "nothing was queued for the stopped collector"
        retiring = Collector(BrokerOptions(broker.host, broker.port), open_store(url),
                             prefix=P, client_id="col-b", share="g")
        assert retiring.retire(threading.Event(), idle_s=1.5, timeout_s=60)
        assert sqlite_count(db) == 100
        assert retiring.stats.stored == 100 - a.collector.stats.stored
        before = a.collector.stats.stored
        for s in range(101, 201):  # only col-a is left in the share
            pub.send(f"{P}/dev1/results/cam", payload(s, device="dev1"))
        assert wait_until(lambda: sqlite_count(db) == 200, 30), sqlite_count(db)
        assert a.collector.stats.stored - before == 100
    finally:
        pub.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM gaps").fetchone() == (0,)
