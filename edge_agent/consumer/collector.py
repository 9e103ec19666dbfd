"""``edge-agent collect``: results and events into a database, each exactly once.

Threads: paho's network thread parses each message and puts it on a bounded queue; the
writer (the thread that calls :meth:`Collector.run`) takes up to ``batch_size`` messages, writes
them in one transaction and only then acknowledges them to the broker (MQTT manual acks).

Nothing is dropped on the way:

* The subscription is QoS 1 in a persistent session (fixed client id, MQTT 5 session expiry),
  so the broker keeps what arrives while the collector is down or disconnected.
* The queue is bounded (``queue_size``, also announced as the MQTT 5 Receive Maximum): when
  it is full, paho's thread waits, so TCP back-pressure holds the broker back; nothing is
  dropped.
* While the database is unreachable the writer retries the same batch with backoff and
  acknowledges nothing: the broker stops sending once the window is full and queues the rest
  for the session. When the collector is killed, the unacknowledged messages are sent again
  after it reconnects (to it, or with a shared subscription possibly to another member).
* Copies (agent resends, broker redeliveries, the other collectors of a share) are absorbed
  by the database's unique key on ``id``.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge_agent.consumer.client import topic_filters
from edge_agent.consumer.messages import MessageFormatError, parse_event, parse_result, parse_topic
from edge_agent.consumer.store import (
    Rejected,
    SqlStore,
    Stored,
    StoreUnavailableError,
    iso_now,
)
from edge_agent.mqtt.inbound import BrokerOptions, InboundClient, InboundMessage, shared
from edge_agent.signals import SignalRelay

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Item:
    message: InboundMessage
    stored: Stored | None
    rejected: Rejected | None


@dataclass(slots=True)
class CollectorStats:
    """Counters since start (``stored``: rows new in the database)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    db_errors: int = 0
    acked: int = 0


class Collector:
    """Subscribes (optionally on a shared subscription) and writes batches to a store.

    Args:
        broker: where to subscribe.
        store: the database (see :func:`edge_agent.consumer.store.open_store`).
        prefix: the devices' topic prefix.
        share: MQTT 5 shared-subscription name: collectors with the same share split the
            messages between them.
        client_id: the persistent session's id (unique per collector).
        devices: device ids to collect (default all); ``pipelines`` likewise.
        batch_size: messages per transaction at most.
        flush_s: how long a partial batch waits for more messages.
        queue_size: messages in flight from the broker (and held in memory) at most.
    """

    def __init__(self, broker: BrokerOptions, store: SqlStore, *, prefix: str,
                 client_id: str, share: str | None = None,
                 devices: Sequence[str] | None = None, pipelines: Sequence[str] | None = None,
                 batch_size: int = 500, flush_s: float = 0.2, queue_size: int = 1000) -> None:
        if batch_size < 1 or queue_size < 1:
            raise ValueError("batch_size and queue_size must be at least 1")
        self.store = store
        self.prefix = prefix
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.stats = CollectorStats()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=queue_size)
        filters = topic_filters(prefix, devices, pipelines, ("results", "events"), status=False)
        self.client = InboundClient(broker, [shared(f, share) for f in filters], self._arrived,
                                    client_id=client_id, manual_ack=True,
                                    receive_maximum=min(queue_size, 65535))
        self.backpressure = 0  # times the queue was full when a message arrived
        self._closing = threading.Event()

    def _arrived(self, msg: InboundMessage) -> None:
        """On paho's thread: parse, and queue (never blocks: the Receive Maximum bounds it)."""
        now = iso_now()
        topic = parse_topic(msg.topic, self.prefix)
        stored: Stored | None = None
        rejected: Rejected | None = None
        try:
            if topic is None or topic.kind not in ("results", "events"):
                raise MessageFormatError("not a results or events topic")
            m = (parse_result if topic.kind == "results" else parse_event)(msg.payload,
                                                                           msg.topic)
            if (m.device, m.pipeline) != (topic.device, topic.pipeline):
                raise MessageFormatError(f"device/pipeline {m.device}/{m.pipeline} do not "
                                         "match the topic")
            stored = Stored(m, now)
        except MessageFormatError as exc:
            rejected = Rejected(msg.topic, str(exc), msg.payload, now)
        item = _Item(msg, stored, rejected)
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            self.backpressure += 1
        # The queue is full (the database is slow or away, and the broker sent more than our
        # Receive Maximum: mosquitto 2.0 does not always honour it). Block paho's thread: TCP
        # back-pressure stops the broker, which keeps the rest for our session. Should the
        # broker drop the connection meanwhile, it redelivers everything unacknowledged.
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _take(self, stop: threading.Event) -> list[_Item]:
        batch: list[_Item] = []
        try:
            batch.append(self._queue.get(timeout=0.2))
        except queue.Empty:
            return batch
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=max(left, 0)) if left > 0
                             else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write(self, batch: list[_Item], stop: threading.Event, *, final: bool) -> bool:
        """Write ``batch`` (retrying while the database is away) and acknowledge it.

        Returns:
            False when ``stop`` was set before the batch could be written (not acknowledged).
        """
        stored = [i.stored for i in batch if i.stored is not None]
        rejected = [i.rejected for i in batch if i.rejected is not None]
        delay = 0.5
        failing_since: float | None = None
        while True:
            try:
                out = self.store.write(stored, rejected)
                break
            except StoreUnavailableError as exc:
                self.stats.db_errors += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.error("database unavailable, holding %d messages unacknowledged: %s",
                                 len(batch), exc)
                if final or stop.wait(delay):
                    return False
                delay = min(delay * 2, 10.0)
        if failing_since is not None:
            logger.warning("database back after %.1f s", time.monotonic() - failing_since)
        self.stats.batches += 1
        self.stats.stored += out.stored
        self.stats.duplicates += out.duplicates
        self.stats.rejected += out.rejected
        self.stats.received += len(batch)
        self.stats.acked += self.client.ack(i.message for i in batch)
        return True

    def run(self, stop: threading.Event, *, stats_interval: float = 60.0,
            on_ready: Callable[[], object] | None = None) -> None:
        """Collect until ``stop`` is set, then write what is queued and disconnect.

        Raises:
            StoreUnavailableError: the database cannot be reached at start.
        """
        self.store.connect()
        self.client.start(timeout=None)
        if on_ready is not None:
            on_ready()
        next_stats = time.monotonic() + stats_interval
        try:
            while not stop.is_set():
                batch = self._take(stop)
                if batch and not self._write(batch, stop, final=False):
                    break
                if time.monotonic() >= next_stats:
                    next_stats += stats_interval
                    logger.info("collector: %s", self.stats)
            # flush what already arrived: stored and acknowledged, or left to the broker
            rest: list[_Item] = []
            while True:
                try:
                    rest.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if rest:
                self._write(rest, stop, final=True)
        finally:
            self._closing.set()  # releases paho's thread if it waits for room in the queue
            self.client.stop()
            self.store.close()
            logger.info("collector stopped: %s", self.stats)


    def retire(self, stop: threading.Event, *, idle_s: float = 3.0,
               timeout_s: float = 600.0) -> bool:
        """Take this collector out of its share for good: unsubscribe, store and acknowledge
        what the broker still holds for its session, then end the session.

        Returns:
            True when the session was drained (nothing arrived for ``idle_s``) and ended;
            False when ``stop`` or ``timeout_s`` came first (the session is kept).

        Raises:
            StoreUnavailableError: the database cannot be reached at start.
        """
        self.store.connect()
        self.client.leave()
        self.client.start(timeout=None)
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        drained = False
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                batch = self._take(stop)
                if batch:
                    if not self._write(batch, stop, final=False):
                        break
                    quiet_since = time.monotonic()
                elif self.client.connected and time.monotonic() - quiet_since >= idle_s:
                    drained = True
                    break
        finally:
            self._closing.set()
            self.client.stop(end_session=drained)
            self.store.close()
            logger.info("collector %s: %s", "retired" if drained else "not retired",
                        self.stats)
        return drained


def install_stop_signals(stop: threading.Event) -> SignalRelay:
    """SIGTERM and SIGINT set ``stop``, from a relay thread (never inside a handler, which
    can deadlock a main thread waiting on ``stop``: see :mod:`edge_agent.signals`).

    Returns the relay; ``relay.stop()`` puts the previous handlers back.
    """
    relay = SignalRelay({signal.SIGTERM: stop.set, signal.SIGINT: stop.set})
    relay.start()
    return relay
