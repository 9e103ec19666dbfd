"""The MQTT transport: paho-mqtt 2.x behind the Transport contract, with a durable outbox.

Threads: paho's network thread (``loop_start``) and one ``mqtt-outbox`` pump thread of ours.
The pump is the only code that hands durable messages to paho. It keeps at most ``window``
durable messages in flight, in outbox (rowid) order, so the outbox drains in order per
pipeline and paho's in-memory queue stays small.

Reconnects: paho reconnects by itself; before each wait we set ``reconnect_delay_set(d, d)``
with ``d`` from :class:`JitteredBackoff`. On every successful CONNACK the transport drops what
paho still holds (``drop_out_messages``: paho would otherwise resend it behind our back),
rewinds the pump to the oldest unacknowledged outbox row, re-subscribes every filter and calls
the ``on_connected`` callbacks (which re-publish status and discovery). Messages that may have
reached the broker before are resent with ``"replayed": true`` and the same ``id``.

Outages are reported, not just counted: the first failed connect is logged at once with the
broker's address and the reason (connection refused, DNS, timeout, TLS, not authorised), then
again at a falling rate while it lasts (after 10 s, 20 s, 40 s, ... at most every 10 min, and
at once when the reason changes), and one line when the broker is back, saying how long it was
down and how deep the outbox is. ``stats()`` carries ``last_error`` and ``down_since``.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from edge_agent.config import AgentConfig
from edge_agent.contract.topics import Topics
from edge_agent.mqtt.backoff import JitteredBackoff
from edge_agent.mqtt.connection import build_client, connect_properties
from edge_agent.mqtt.outbox import FILENAME, SqliteOutbox

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
Render = Callable[[int, str], bytes]

_OK = MQTTErrorCode.MQTT_ERR_SUCCESS


REPORT_FIRST_S = 10.0  # the first "still down" line after this long
REPORT_MAX_S = 600.0  # then doubling intervals, at most this long


def describe_connect_error(exc: BaseException | None, host: str) -> str:
    """Why a connection attempt failed, in words a user can act on.

    Args:
        exc: what the attempt raised (None: paho gave no reason).
        host: the configured broker host (named in DNS failures).
    """
    if exc is None:
        return "connection failed (no reason given)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {getattr(exc, 'reason', None) or exc.strerror or exc}"
    if isinstance(exc, socket.gaierror):
        return f"DNS: cannot resolve {host!r} ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port?)"
    if isinstance(exc, TimeoutError):
        return "timeout (no answer from the broker)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the broker"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_connack(reason_code: Any) -> str:
    """A refused CONNACK in words (bad credentials, not authorised, ...)."""
    text = str(reason_code)
    value = getattr(reason_code, "value", None)
    # MQTT 5: 0x86 bad user name or password, 0x87 not authorized; 3.1.1: 4 and 5
    if value in (0x86, 0x87, 4, 5) or "authori" in text.lower() or "password" in text.lower():
        return f"not authorised by the broker ({text})"
    return f"refused by the broker ({text})"


def mark_replayed(payload: bytes) -> bytes:
    """Add ``"replayed": true`` to a JSON object payload (other payloads pass unchanged)."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload
    if not isinstance(obj, dict):
        return payload
    obj["replayed"] = True
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class MqttTransport:
    """Publishes results durably and everything else best-effort; subscribes for commands.

    Args:
        config: the agent config (``mqtt`` section, ``device_id``, ``client_id``).
        state_dir: where ``outbox.sqlite`` lives.
        window: durable messages in flight at once (paho's in-flight window is a bit larger to
            leave room for status, replies and stats).
    """

    def __init__(self, config: AgentConfig, state_dir: Path, *, window: int = 100) -> None:
        self.config = config
        self.mqtt = config.mqtt
        self.boot_id = uuid.uuid4().hex
        self.topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.window = window
        self._window = window  # this connection's: lowered to the broker's Receive Maximum
        self._client = build_client(config, window)  # first: it may raise ConfigError
        self._outbox = SqliteOutbox(Path(state_dir) / FILENAME, config.mqtt.outbox)
        self._lock = threading.RLock()  # connection state, in-flight map, cursor, handlers
        self._connected = False
        self._epoch = 0  # +1 per successful CONNACK
        self._inflight: dict[int, int] = {}  # paho mid -> outbox rowid (this epoch)
        self._cursor = 0  # highest rowid handed to paho in this epoch
        self._handed = 0  # highest rowid handed to paho since this process started
        self._acks: collections.deque[tuple[int, int]] = collections.deque()  # (epoch, mid)
        self._handlers: dict[str, Handler] = {}
        self._on_connected: list[Callable[[], None]] = []
        self._recent: collections.deque[paho.MQTTMessageInfo] = collections.deque(maxlen=1000)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._pump: threading.Thread | None = None
        self._started = False
        self._ever_connected = False
        self._last_error: str | None = None  # the reason of the last failed connect/disconnect
        self._down_since: float | None = None  # epoch s: when the current outage started
        self._down_mono = 0.0  # the same, monotonic
        self._reported_error: str | None = None  # the reason last written to the log
        self._next_report = 0.0  # monotonic: when a persisting outage is logged again
        self._report_every = REPORT_FIRST_S
        self._failures_since_report = 0
        self._counters = {"reconnects": 0, "published": 0, "acked": 0, "dropped_nondurable": 0,
                          "refused": 0, "replayed": 0, "connect_failures": 0,
                          "network_restarts": 0}
        self._backoff = JitteredBackoff(base=min(0.5, config.mqtt.reconnect_max_s),
                                        cap=config.mqtt.reconnect_max_s)
        self._bind(self._client)

    # ------------------------------------------------------------------ setup

    def _bind(self, client: paho.Client) -> None:
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message

    def set_will(self, topic: str, payload: bytes) -> None:
        """The last will (retained, QoS 1); call before :meth:`start` (else: next connect)."""
        self._client.will_set(topic, payload, qos=1, retain=True)

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after every successful (re)connect, on paho's network thread.

        It must be quick (publish status, discovery); exceptions are logged and swallowed.
        """
        with self._lock:
            self._on_connected.append(callback)

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is down."""
        if self._started:
            return
        self._started = True
        cfg = self.mqtt
        # imported here: mqtt.commands loads jsonschema and cryptography (not the transport's)
        from edge_agent.mqtt.commands import max_packet_size

        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive,
                                   clean_start=False,
                                   properties=connect_properties(
                                       cfg, max_packet_size(self.config.commands)))
        self._client.loop_start()
        self._pump = threading.Thread(target=self._run_pump, name="mqtt-outbox", daemon=True)
        self._pump.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush (while connected, until ``timeout``), disconnect, stop every thread.

        Publishes nothing itself: the agent publishes its retained ``offline`` before this.
        Unacknowledged durable messages stay in the outbox for the next start.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        if self._started:
            while time.monotonic() < deadline and self._connected and not self._flushed():
                self._wake.set()
                time.sleep(0.01)
            self._halt.set()
            self._wake.set()
            if self._pump is not None:
                self._pump.join(max(0.1, deadline - time.monotonic()))
                if self._pump.is_alive():
                    logger.warning("mqtt outbox pump did not stop in time")
            self._client.disconnect()
            self._client.loop_stop()
            self._flush_acks()
            self._started = False
        with self._lock:
            self._connected = False
        self._outbox.close()

    def _flushed(self) -> bool:
        if self._outbox.depth:
            return False
        return all(info.is_published() for info in list(self._recent))

    # ------------------------------------------------------------------ publishing

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        """Best-effort publish (status, stats, replies, snapshots): dropped while disconnected.

        A drop is counted in ``dropped_nondurable``; retained status is re-sent by the
        agent's ``on_connected`` callback.
        """
        with self._lock:
            if not self._connected:
                self._counters["dropped_nondurable"] += 1
                return
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            self._counters["published" if info.rc == _OK else "dropped_nondurable"] += 1
        if info.rc != _OK:
            logger.debug("publish to %s not queued: %s", topic, paho.error_string(info.rc))
            return
        self._recent.append(info)

    def publish_durable(self, pipeline: str, topic: str, render: Render) -> int:
        """Store a result/event in the outbox (allocating seq and id), then send it.

        Args:
            pipeline: the pipeline it belongs to.
            topic: the destination; each topic (``results/<p>``, ``events/<p>``) has its own
                gap-free ``seq`` counter.
            render: ``render(seq, id) -> bytes`` builds the payload inside the outbox's
                transaction; if it raises, nothing is stored and the seq is not used.

        Returns:
            the message's seq.
        """
        appended = self._outbox.append(self._stream(pipeline, topic), topic, render,
                                       self.mqtt.qos, sent=self._connected)
        self._wake.set()
        return appended.seq

    def _stream(self, pipeline: str, topic: str) -> str:
        """The seq counter a message uses: one per topic a subscriber reads.

        ``results/<p>`` and ``events/<p>`` count separately, so a subscriber of results sees
        no gaps where events took numbers. Topics outside ``P/D/`` count per pipeline.
        """
        base = self.topics.base + "/"
        return topic[len(base):] if topic.startswith(base) else pipeline

    def last_seq(self, pipeline: str, topic: str) -> int:
        """The last seq allocated for ``topic`` (0: none yet)."""
        return self._outbox.last_seq(self._stream(pipeline, topic))

    # ------------------------------------------------------------------ pump

    def _run_pump(self) -> None:
        next_checkpoint = time.monotonic() + 1.0
        while not self._halt.is_set():
            self._wake.wait(0.25)
            self._wake.clear()
            wait = self._outbox.group_wait()  # group commit: let the group fill first
            if wait > 0:
                self._halt.wait(wait)
            try:
                self._outbox.commit()  # connected or not: a group never waits for the broker
                self._revive_network_thread()
                self._flush_acks()
                self._send_backlog()
                if time.monotonic() >= next_checkpoint:
                    self._outbox.checkpoint()
                    next_checkpoint = time.monotonic() + 1.0
            except Exception:
                logger.exception("mqtt outbox pump failed; retrying")
                self._halt.wait(1.0)

    def _revive_network_thread(self) -> None:
        """Restart paho's network thread if it died.

        paho ends ``loop_forever`` on any exception its loop does not expect (an OSError from
        a sleep, a bug in a socket wrapper), and nothing would ever reconnect: the device
        would stay offline with its outbox filling. The chaos run found this (a failing
        ``time.sleep`` under libfaketime); any such death is logged, counted and healed here.
        """
        # paho clears ``_thread`` when its loop ends; only stop() ends it on purpose, and
        # stop() sets _halt first
        if self._halt.is_set() or not hasattr(self._client, "_thread"):
            return
        thread: threading.Thread | None = self._client._thread
        if thread is not None and thread.is_alive():
            return
        logger.error("mqtt network thread died; restarting it (see the traceback above)")
        self._counters["network_restarts"] += 1
        with self._lock:
            self._connected = False
        self._client.loop_start()

    def _flush_acks(self) -> None:
        rowids: list[int] = []
        with self._lock:
            while self._acks:
                epoch, mid = self._acks.popleft()
                if epoch == self._epoch:
                    rowid = self._inflight.pop(mid, None)
                    if rowid is not None:
                        rowids.append(rowid)
        if rowids:
            self._outbox.ack(rowids)
            self._counters["acked"] += len(rowids)

    def _send_backlog(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                if not self._connected:
                    return
                free = self._window - len(self._inflight)
                after, epoch = self._cursor, self._epoch
            if free <= 0 or after >= self._outbox.last_rowid:
                return  # window full, or nothing stored after the cursor (skip the SELECT)
            rows = self._outbox.pending(after=after, limit=free)
            if not rows:
                return
            self._outbox.mark_sent(r.rowid for r in rows if not r.sent)
            for row in rows:
                # a replay: handed out before by this process, or possibly by an earlier one
                replay = row.rowid <= self._handed or (
                    row.sent and row.rowid <= self._outbox.rowid_at_open)
                payload = mark_replayed(row.payload) if replay else row.payload
                with self._lock:
                    if not self._connected or self._epoch != epoch:
                        return
                    info = self._client.publish(row.topic, payload, qos=row.qos)
                    if info.rc != _OK:
                        logger.debug("outbox publish failed: %s", paho.error_string(info.rc))
                        return
                    self._cursor = row.rowid
                    self._handed = max(self._handed, row.rowid)
                    if row.qos:
                        self._inflight[info.mid] = row.rowid
                    self._counters["replayed"] += int(replay)
                    self._counters["published"] += 1
                if not row.qos:
                    self._outbox.ack(row.rowid)
            self._flush_acks()

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Route messages matching ``topic_filter`` to ``handler(topic, payload)`` (QoS 1).

        The subscription is renewed on every reconnect; the session is persistent, so
        commands sent while the device was offline arrive when it is back. Handlers run on
        paho's network thread: they must be quick (hand work to a queue).
        """
        with self._lock:
            self._handlers[topic_filter] = handler
            connected = self._connected
        if connected:
            self._subscribe(topic_filter)

    def _subscribe(self, topic_filter: str) -> None:
        rc, _mid = self._client.subscribe(topic_filter, qos=1)
        if rc != _OK:
            logger.warning("subscribe to %s failed: %s", topic_filter, paho.error_string(rc))

    def _handle_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            handlers = [h for f, h in self._handlers.items()
                        if paho.topic_matches_sub(f, msg.topic)]
        for handler in handlers:
            try:
                handler(msg.topic, bytes(msg.payload))
            except Exception:
                logger.exception("handler for %s failed", msg.topic)

    # ------------------------------------------------------------------ paho callbacks

    def _handle_connect(self, client: paho.Client, userdata: Any, flags: paho.ConnectFlags,
                        reason_code: Any, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._counters["connect_failures"] += 1
            with self._lock:
                self._connected = False
            self._report_failure(describe_connack(reason_code))
            self._set_delay()
            return
        with self._lock:
            # What paho still holds would be resent without the replayed mark and out of our
            # order: the pump resends it from the outbox instead.
            client.drop_out_messages()
            self._recent.clear()  # dropped above: stop() must not wait for them
            self._epoch += 1
            # MQTT 5: paho does not honour the broker's Receive Maximum; stay under it, leaving
            # room for status, replies and stats.
            limit = getattr(properties, "ReceiveMaximum", None) if properties else None
            self._window = self.window if not limit else max(1, min(self.window, limit - 5))
            self._inflight.clear()
            self._cursor = 0
            self._connected = True
            if self._ever_connected:
                self._counters["reconnects"] += 1
            self._ever_connected = True
            filters = list(self._handlers)
            callbacks = list(self._on_connected)
        self._backoff.reset()
        self._report_connected(bool(flags.session_present))
        for topic_filter in filters:
            self._subscribe(topic_filter)
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("on_connected callback failed")
        self._wake.set()

    def _handle_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._counters["connect_failures"] += 1
        # paho calls this from inside its ``except OSError`` around the connect attempt and
        # passes no reason: the exception being handled is the reason
        self._report_failure(describe_connect_error(sys.exc_info()[1], self.mqtt.host))
        self._set_delay()

    # ------------------------------------------------------------------ outage reports

    def _address(self) -> str:
        tls = " (TLS)" if self.mqtt.tls.enabled else ""
        return f"{self.mqtt.host}:{self.mqtt.port}{tls}"

    def _mark_down(self, reason: str) -> bool:
        """Record an outage's reason; True when this starts a new outage."""
        self._last_error = reason
        if self._down_since is not None:
            return False
        self._down_since = time.time()
        self._down_mono = time.monotonic()
        return True

    def _report_failure(self, reason: str) -> None:
        """Log a failed connect: at once when the outage starts or the reason changes, then
        after 10 s, 20 s, 40 s, ... (at most every REPORT_MAX_S) while it persists."""
        if self._halt.is_set():
            return
        new = self._mark_down(reason)
        now = time.monotonic()
        self._failures_since_report += 1
        if new or self._reported_error is None or reason != self._reported_error:
            if self._ever_connected and not new:
                logger.warning("cannot reconnect to broker %s: %s; retrying, results are kept "
                               "in the outbox (depth %d)", self._address(), reason,
                               self._outbox.depth)
            else:
                logger.warning("cannot connect to broker %s: %s; retrying, results are kept "
                               "in the outbox (depth %d)", self._address(), reason,
                               self._outbox.depth)
            self._report_every = REPORT_FIRST_S
        elif now >= self._next_report:
            logger.warning("broker %s still unreachable after %.0f s (%d attempts since the "
                           "last report): %s; outbox depth %d", self._address(),
                           now - self._down_mono, self._failures_since_report, reason,
                           self._outbox.depth)
            self._report_every = min(REPORT_MAX_S, self._report_every * 2)
        else:
            return
        self._reported_error = reason
        self._failures_since_report = 0
        self._next_report = now + self._report_every

    def _report_connected(self, session_present: bool) -> None:
        if self._down_since is None:
            logger.info("connected to %s (session present: %s, outbox depth %d)",
                        self._address(), session_present, self._outbox.depth)
            return
        down = time.monotonic() - self._down_mono
        logger.warning("%s broker %s after %.1f s down (last error: %s); outbox depth %d, "
                       "session present: %s",
                       "reconnected to" if self._counters["reconnects"] else "connected to",
                       self._address(), down, self._last_error, self._outbox.depth,
                       session_present)
        self._down_since = None
        self._reported_error = None
        self._failures_since_report = 0

    def _handle_disconnect(self, client: paho.Client, userdata: Any,
                           flags: paho.DisconnectFlags, reason_code: Any,
                           properties: Properties | None) -> None:
        # No lock here: paho may call this with its own locks held.
        was, self._connected = self._connected, False
        if was and not self._halt.is_set():
            self._mark_down(f"disconnected ({reason_code})")
            self._reported_error = self._last_error
            self._next_report = time.monotonic() + REPORT_FIRST_S
            self._report_every = REPORT_FIRST_S
            logger.warning("disconnected from broker %s (%s); retrying, results are kept in "
                           "the outbox", self._address(), reason_code)
        self._set_delay()

    def _set_delay(self) -> None:
        delay = self._backoff.next()
        # floats work: paho only adds and compares the delay
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _handle_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any,
                        properties: Properties | None) -> None:
        # Called with paho's out-message lock held: never take self._lock here (the pump holds
        # it while it calls publish). The pump maps mids to rows.
        if reason_code.is_failure:
            self._counters["refused"] += 1
            logger.warning("broker refused message %d: %s", mid, reason_code)
        self._acks.append((self._epoch, mid))
        self._wake.set()

    # ------------------------------------------------------------------ stats

    @property
    def connected(self) -> bool:
        """Whether the broker accepted our last connect and we are still connected."""
        return self._connected

    @property
    def outbox(self) -> SqliteOutbox:
        """The outbox (read-only use: depth, dropped)."""
        return self._outbox

    def stats(self) -> dict[str, Any]:
        """Counters for the stats message and /metrics.

        Keys: connected, reconnects, outbox_depth, outbox_bytes, outbox_dropped,
        outbox_store_failed (messages lost to a full disk or an I/O error), inflight,
        published, acked, replayed, refused, dropped_nondurable, connect_failures, boot_id,
        last_error (the reason of the last failed connect or disconnect, None before any),
        down_since (epoch seconds when the current outage started; None while connected).
        """
        with self._lock:
            inflight = len(self._inflight)
        return {
            "connected": self._connected,
            "outbox_depth": self._outbox.depth,
            "outbox_bytes": self._outbox.size_bytes,
            "outbox_dropped": self._outbox.dropped,
            "outbox_store_failed": self._outbox.store_failed,
            "inflight": inflight,
            **self._counters,
            "boot_id": self.boot_id,
            "last_error": self._last_error,
            "down_since": self._down_since,
        }
