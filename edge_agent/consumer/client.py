"""The consumer: subscribe to devices, get typed messages once each, and hear about gaps.

Example (ten lines)::

    from edge_agent.consumer import Consumer, Gap, Result

    with Consumer("localhost:1883", devices=["door-cam"]) as consumer:
        for item in consumer:
            if isinstance(item, Result):
                print(item.device, item.pipeline, item.seq, dict(item.counts))
            elif isinstance(item, Gap):
                print("lost", item.missing, "messages of", item.device, item.pipeline)

Messages are parsed and deduplicated on paho's network thread and queued (bounded); iterating
(or :meth:`Consumer.get`) takes them on the caller's thread, so a slow consumer never blocks
the network thread. When the queue is full, new items are dropped and counted
(``stats().overflow``): size it for the bursts you expect, or use ``edge-agent collect``,
which acknowledges only what it stored.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from types import TracebackType

from edge_agent.consumer.messages import (
    Event,
    MessageFormatError,
    Result,
    Status,
    parse_event,
    parse_result,
    parse_status,
    parse_topic,
)
from edge_agent.consumer.options import DEFAULT_PREFIX
from edge_agent.consumer.sequence import (
    Gap,
    GapFilled,
    IdWindow,
    Report,
    Restart,
    Rewind,
    SeqTracker,
)
from edge_agent.contract.messages import SPECS
from edge_agent.mqtt.inbound import (
    BrokerOptions,
    InboundClient,
    InboundMessage,
    parse_broker,
    shared,
)

logger = logging.getLogger(__name__)

Item = Result | Event | Status | Report
"""What a consumer yields: a message or a report about the stream."""


@dataclass(slots=True)
class ConsumerStats:
    """Counters since start.

    Attributes:
        received: copies that arrived (results and events).
        delivered: results and events handed on (each id once).
        duplicates: copies dropped because their id was seen already.
        replayed: delivered messages the device marked ``replayed`` (first copies of resends).
        gaps: gaps found; ``missing`` the seqs in them; ``filled`` seqs that came late.
        restarts: boot changes seen; ``rewinds``: seq counters that went back.
        malformed: payloads that are not messages of the contract (logged with the topic).
        filtered: messages of devices outside ``groups``.
        overflow: items dropped because the queue was full.
    """

    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    replayed: int = 0
    gaps: int = 0
    missing: int = 0
    filled: int = 0
    restarts: int = 0
    rewinds: int = 0
    malformed: int = 0
    filtered: int = 0
    overflow: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


def topic_filters(prefix: str, devices: Sequence[str] | None, pipelines: Sequence[str] | None,
                  kinds: Sequence[str], *, status: bool) -> list[str]:
    """The topic filters for devices x kinds x pipelines (``+`` where not narrowed)."""
    devs = list(devices) if devices else ["+"]
    pipes = list(pipelines) if pipelines else ["+"]
    specs = {"results": SPECS["result"], "events": SPECS["event"]}
    out = [SPECS["status"].topic_for(f"{prefix}/{d}", None) for d in devs] if status else []
    out += [specs[k].topic_for(f"{prefix}/{d}", p) for d in devs for k in kinds for p in pipes]
    return out


class Consumer:
    """Subscribes to what devices publish and yields each result and event once, in order of
    arrival, with :class:`Gap`, :class:`GapFilled`, :class:`Restart` and :class:`Rewind`
    reports in between.

    Args:
        broker: ``"HOST[:PORT]"`` or :class:`BrokerOptions` (TLS, credentials).
        devices: device ids to follow (default: all).
        groups: follow only devices in these groups (from their retained ``status`` or
            ``inventory``; a device is followed once its group membership has arrived).
        pipelines: pipeline names to follow (default: all).
        kinds: ``"results"`` and/or ``"events"``.
        prefix: the devices' ``mqtt.topic_prefix``.
        client_id: a fixed id for a persistent session (the broker queues while you are away).
        share: an MQTT 5 shared-subscription group: the broker splits the messages among the
            consumers of the same share (gap detection then sees only a part of each stream
            and is switched off).
        dedupe: ids remembered for deduplication.
        queue_size: items buffered between the network thread and the caller.
        status: also yield :class:`Status` messages.
    """

    def __init__(self, broker: str | BrokerOptions, *, devices: Sequence[str] | None = None,
                 groups: Sequence[str] | None = None, pipelines: Sequence[str] | None = None,
                 kinds: Sequence[str] = ("results", "events"), prefix: str = DEFAULT_PREFIX,
                 client_id: str = "", share: str | None = None, dedupe: int = 100_000,
                 queue_size: int = 10_000, status: bool = True) -> None:
        if isinstance(broker, str):
            host, port = parse_broker(broker)
            broker = BrokerOptions(host, port)
        bad = [k for k in kinds if k not in ("results", "events")]
        if bad:
            raise ValueError(f"kinds: {bad} (expected results and/or events)")
        self.prefix = prefix
        self._groups = set(groups or ())
        self._device_groups: dict[str, set[str]] = {}
        self._want_status = status
        self._ids = IdWindow(dedupe)
        self._tracker = SeqTracker() if share is None else None
        self._stats = ConsumerStats()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=queue_size)
        filters = topic_filters(prefix, devices, pipelines, kinds,
                                status=status or bool(groups))
        if groups:
            filters.insert(0, f"{prefix}/+/inventory")
        self._client = InboundClient(broker, [shared(f, share) for f in filters], self._arrived,
                                     client_id=client_id)

    # ------------------------------------------------------------------ network thread

    def _put(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._stats.overflow += 1

    def _arrived(self, msg: InboundMessage) -> None:
        topic = parse_topic(msg.topic, self.prefix)
        if topic is None:
            return
        if topic.kind in ("status", "inventory"):
            self._status(topic.device, topic.kind, msg.payload)
            return
        if self._groups and not self._groups & self._device_groups.get(topic.device, set()):
            with self._lock:
                self._stats.filtered += 1
            return
        try:
            m: Result | Event = (parse_result if topic.kind == "results" else parse_event)(
                msg.payload, msg.topic)
        except MessageFormatError as exc:
            with self._lock:
                self._stats.malformed += 1
            logger.warning("malformed message: %s", exc)
            return
        with self._lock:
            self._stats.received += 1
            if self._ids.seen(m.id):
                self._stats.duplicates += 1
                return
            self._stats.delivered += 1
            self._stats.replayed += int(m.replayed)
            reports = (self._tracker.observe(m.device, m.kind, m.pipeline, m.seq, m.boot_id)
                       if self._tracker is not None else [])
            for r in reports:
                self._count(r)
        for r in reports:
            if not isinstance(r, GapFilled):
                self._put(r)
        self._put(m)

    def _count(self, r: Report) -> None:
        if isinstance(r, Gap):
            self._stats.gaps += 1
            self._stats.missing += r.missing
        elif isinstance(r, GapFilled):
            self._stats.filled += 1
        elif isinstance(r, Restart):
            self._stats.restarts += 1
        elif isinstance(r, Rewind):
            self._stats.rewinds += 1

    def _status(self, device: str, kind: str, payload: bytes) -> None:
        try:
            st = parse_status(payload, device, kind)
        except MessageFormatError as exc:
            with self._lock:
                self._stats.malformed += 1
            logger.warning("malformed %s of %s: %s", kind, device, exc)
            return
        if st is None:
            return
        if self._groups and (st.groups or kind == "inventory"):
            self._device_groups[device] = set(st.groups)
        if kind == "status" and self._want_status and (
                not self._groups or self._groups & self._device_groups.get(device, set())):
            self._put(st)

    # ------------------------------------------------------------------ caller's side

    def start(self, timeout: float = 10.0) -> Consumer:
        """Connect and subscribe.

        Raises:
            ConnectionError: not subscribed within ``timeout`` (the broker is unreachable or
                refused us); the consumer is stopped again.
        """
        if not self._client.start(timeout):
            why = self._client.refused or "no answer"
            self._client.stop()
            raise ConnectionError(f"cannot subscribe at {self._client.broker.host}:"
                                  f"{self._client.broker.port} within {timeout:g} s ({why})")
        return self

    def stop(self) -> None:
        """Disconnect and join the network thread."""
        self._client.stop()

    def __enter__(self) -> Consumer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def get(self, timeout: float | None = None) -> Item | None:
        """The next item, or None after ``timeout`` seconds without one."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[Item]:
        """Every item as it comes (blocks; stop with Ctrl-C or ``break``)."""
        while True:
            item = self.get(1.0)
            if item is not None:
                yield item

    def stats(self) -> ConsumerStats:
        """A copy of the counters."""
        with self._lock:
            return ConsumerStats(**self._stats.as_dict())

    def open_gaps(self) -> list[Gap]:
        """Gaps found and not filled since."""
        if self._tracker is None:
            return []
        with self._lock:
            return self._tracker.open_gaps()

    @property
    def connected(self) -> bool:
        """Whether the consumer is connected to the broker right now."""
        return self._client.connected
