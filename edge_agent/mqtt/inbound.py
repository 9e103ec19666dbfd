"""The receiving end's MQTT connection: consumers, ``watch`` and ``collect`` subscribe here.

:class:`InboundClient` is a paho client for *subscribers* of what devices publish (the daemon's
own transport is :mod:`edge_agent.mqtt.client`). It speaks MQTT 5 by default, keeps a
persistent session when given a client id, subscribes QoS 1 after every connect (shared
subscriptions ``$share/<name>/...`` included) and can leave acknowledging to its user
(``manual_ack``): the collector acknowledges a message only after the database committed it,
so a message it could not store stays with the broker.

Acknowledging after a reconnect needs care: a packet id is only meaningful on the connection
it arrived on. Every message carries the *epoch* of its connection; :meth:`InboundClient.ack`
drops acknowledgements of an earlier epoch (the broker redelivers those messages on the new
connection anyway, and the stale id may by then name a different message).
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
SESSION_EXPIRY_S = 7 * 24 * 3600
"""MQTT 5 session expiry of a persistent consumer session (the broker queues while away)."""

_SHARE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Where and how to connect: the ``--broker`` family of options of every command.

    Attributes:
        host: broker host name or address.
        port: broker port.
        tls_ca: CA certificate file; TLS is on when set.
        tls_cert: client certificate file (mutual TLS).
        tls_key: client key file.
        username: user name for password authentication.
        password: the password (read from ``--password-file``, never from the command line).
        protocol: ``"5"`` (default) or ``"3.1.1"``.
    """

    host: str
    port: int = DEFAULT_PORT
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    username: str | None = None
    password: str | None = None
    protocol: str = "5"


def parse_broker(text: str, *, tls: bool = False) -> tuple[str, int]:
    """``HOST[:PORT]`` (or ``[V6]:PORT``) as ``(host, port)``.

    Raises:
        ConfigError: an empty host or a port that is not 1..65535.
    """
    default = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    host, port_text = text.strip(), ""
    if host.startswith("["):  # [::1]:1883
        inner, _, rest = host[1:].partition("]")
        host, port_text = inner, rest.removeprefix(":")
    elif host.count(":") == 1:
        host, _, port_text = host.partition(":")
    if not host:
        raise ConfigError(f"--broker {text!r}: expected HOST[:PORT]")
    if not port_text:
        return host, default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"--broker {text!r}: port must be a number from 1 to 65535")
    return host, int(port_text)


def shared(topic_filter: str, share: str | None) -> str:
    """``topic_filter`` as an MQTT 5 shared subscription ``$share/<share>/<filter>``.

    Raises:
        ConfigError: a share name with characters MQTT does not allow there.
    """
    if not share:
        return topic_filter
    if not _SHARE_NAME.match(share):
        raise ConfigError(f"--share {share!r}: expected letters, digits, '.', '_' or '-'")
    return f"$share/{share}/{topic_filter}"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message as it arrived.

    Attributes:
        topic: the topic it was published to.
        payload: its bytes.
        qos: the QoS it arrived with (0, 1 or 2).
        retain: the retain flag (a retained message sent at subscribe time).
        dup: the MQTT DUP flag (the broker redelivers it).
        mid: the packet id, for :meth:`InboundClient.ack`.
        epoch: the connection it arrived on (see the module docstring).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    epoch: int


MessageCallback = Callable[[InboundMessage], None]


class InboundClient:
    """Subscribes QoS 1 to topic filters after every connect and hands each message on.

    Args:
        broker: where and how to connect.
        topics: topic filters (already wrapped with :func:`shared` where wanted).
        on_message: called on paho's network thread; it must not block for long.
        client_id: a fixed client id gives a persistent session (the broker keeps the
            subscriptions and queues QoS 1 messages while this client is away); empty for a
            throw-away session.
        manual_ack: acknowledge only through :meth:`ack` (QoS 1 and 2 messages).
        receive_maximum: MQTT 5 flow control: at most this many unacknowledged QoS 1/2
            messages in flight to us. With ``manual_ack`` this bounds what can pile up here.

    Raises:
        ConfigError: unreadable certificates.
    """

    def __init__(self, broker: BrokerOptions, topics: Sequence[str],
                 on_message: MessageCallback, *, client_id: str = "",
                 manual_ack: bool = False, receive_maximum: int | None = None) -> None:
        self.broker = broker
        self._topics = list(topics)
        self._on_message = on_message
        self._v5 = broker.protocol == "5"
        self._persistent = bool(client_id)
        self._receive_maximum = receive_maximum
        self._lock = threading.Lock()
        self._epoch = 0
        self._connected = False
        self._stopping = False
        self._leaving = False
        self.connects = 0
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._v5 else not self._persistent,
            manual_ack=manual_ack)
        self._client.suppress_exceptions = True
        self._client.reconnect_delay_set(0.2, 2)  # type: ignore[arg-type]
        if broker.username:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls_ca is not None:
            try:
                self._client.tls_set(
                    ca_certs=str(broker.tls_ca),
                    certfile=str(broker.tls_cert) if broker.tls_cert else None,
                    keyfile=str(broker.tls_key) if broker.tls_key else None,
                    cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--tls-ca/--tls-cert/--tls-key: cannot load: {exc}") from None
        self._client.on_connect = self._connected_cb
        self._client.on_disconnect = self._disconnected_cb
        self._client.on_subscribe = self._subscribed_cb
        self._client.on_message = self._message_cb

    # ------------------------------------------------------------------ paho callbacks

    def _connected_cb(self, client: paho.Client, userdata: object, flags: object,
                      reason: ReasonCode, properties: object) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            logger.warning("broker %s:%d refused the connection: %s", self.broker.host,
                           self.broker.port, reason)
            return
        with self._lock:
            self._epoch += 1
            self._connected = True
            self.connects += 1
        self.refused = None
        logger.info("connected to %s:%d (session present: %s)", self.broker.host,
                    self.broker.port, getattr(flags, "session_present", None))
        if self._leaving:
            # retiring: stop new assignments; what the session already holds still comes
            client.unsubscribe(self._topics)
            self.subscribed.set()
            return
        # one SUBSCRIBE for all filters: its SUBACK means every filter is active
        client.subscribe([(topic, 1) for topic in self._topics])

    def _disconnected_cb(self, client: paho.Client, userdata: object, flags: object,
                         reason: object, properties: object) -> None:
        with self._lock:
            self._epoch += 1  # acks of what arrived on the old connection are now void
            was = self._connected
            self._connected = False
        if was and not self._stopping:
            logger.warning("lost the broker %s:%d (%s); reconnecting", self.broker.host,
                           self.broker.port, reason)

    def _subscribed_cb(self, client: paho.Client, userdata: object, mid: int,
                       reasons: list[ReasonCode], properties: object) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            logger.error("the broker refused a subscription: %s", ", ".join(refused))
        self.subscribed.set()

    def _message_cb(self, client: paho.Client, userdata: object,
                    msg: paho.MQTTMessage) -> None:
        with self._lock:
            epoch = self._epoch
        try:
            self._on_message(InboundMessage(msg.topic, bytes(msg.payload), int(msg.qos),
                                            bool(msg.retain), bool(msg.dup), int(msg.mid),
                                            epoch))
        except Exception:  # a consumer's bug must not end paho's network thread
            logger.exception("message handler failed on %s", msg.topic)

    # ------------------------------------------------------------------ control

    @property
    def connected(self) -> bool:
        """Whether the last CONNACK accepted us and no disconnect followed."""
        with self._lock:
            return self._connected

    def start(self, timeout: float | None = 10.0) -> bool:
        """Connect in the background and start paho's thread.

        Returns:
            True once the first SUBACK arrived within ``timeout`` (None: do not wait; the
            client keeps trying to connect either way).
        """
        props: Properties | None = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self._persistent:
                props.SessionExpiryInterval = SESSION_EXPIRY_S
            if self._receive_maximum:
                props.ReceiveMaximum = self._receive_maximum
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30,
                                   clean_start=not self._persistent if self._v5 else 3,
                                   properties=props)
        self._client.loop_start()
        if timeout is None:
            return False
        return self.subscribed.wait(timeout)

    def ack(self, messages: Iterable[InboundMessage]) -> int:
        """Acknowledge messages (with ``manual_ack``) that arrived on the current connection.

        Returns:
            how many were acknowledged; the rest (QoS 0, or an earlier connection's) need none
            or will come again.
        """
        done = 0
        with self._lock:
            if not self._connected:
                return 0
            for m in messages:
                if m.qos == 0 or m.epoch != self._epoch:
                    continue
                if self._client.ack(m.mid, m.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    done += 1
        return done

    def send(self, topic: str, payload: bytes, timeout: float = 10.0) -> bool:
        """Publish one operator message (a command) QoS 1; True once the broker acknowledged
        it within ``timeout``."""
        info = self._client.publish(topic, payload, qos=1)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):  # not connected / queue full
            return False
        return info.is_published()

    def leave(self) -> None:
        """Before :meth:`start`: unsubscribe instead of subscribing (to drain a session that is
        being retired; the messages it already holds are still delivered)."""
        self._leaving = True

    def stop(self, *, end_session: bool = False) -> None:
        """Disconnect and join paho's thread.

        Args:
            end_session: end the persistent session too (MQTT 5: session expiry 0 in the
                DISCONNECT); otherwise it stays on the broker, which keeps queueing for it.
        """
        self._stopping = True
        props: Properties | None = None
        if end_session and self._v5:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        self._client.loop_stop()
