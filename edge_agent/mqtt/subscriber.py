"""A small MQTT subscriber for the CLI's live views (``demo``, ``model push``, ``model status``).

It is a *consumer* of what the device publishes, never a way for the daemon to publish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
"""``(topic, payload, retained)``."""


class Subscriber:
    """Subscribes to topic filters and calls ``on_message`` from paho's network thread.

    Args:
        host: broker host.
        port: broker port.
        topics: topic filters to subscribe to (QoS 1).
        on_message: called with ``(topic, payload, retained)``.
        client_id: optional client id (a persistent session when ``clean`` is False).
        clean: start a clean session.
        tls: optional ``(ca_certs, certfile, keyfile)``.
        username: optional user name for password authentication.
        password: its password.
        protocol: ``"3.1.1"`` or ``"5"``.
    """

    def __init__(self, host: str, port: int, topics: Sequence[str], on_message: MessageHandler,
                 *, client_id: str = "", clean: bool = True,
                 tls: tuple[str | None, str | None, str | None] | None = None,
                 username: str | None = None, password: str | None = None,
                 protocol: str = "3.1.1") -> None:
        self._topics = list(topics)
        self._on_message = on_message
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        if protocol == "5":  # MQTT 5 has clean_start at connect instead of clean_session
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                       protocol=mqtt.MQTTv5)
        else:
            self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                       clean_session=clean if client_id else True,
                                       protocol=mqtt.MQTTv311)
        self._v5_clean_start: bool | None = clean if protocol == "5" else None
        if username:
            self._client.username_pw_set(username, password)
        if tls is not None:
            ca, cert, key = tls
            self._client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        self._client.on_connect = self._connected
        self._client.on_subscribe = self._subscribed
        self._client.on_message = self._message
        self._host, self._port = host, port

    def _connected(self, client: mqtt.Client, userdata: object, flags: object,
                   reason: object, properties: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.warning("subscriber: broker refused the connection: %s", reason)
            return
        self.connected.set()
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _subscribed(self, *args: object) -> None:
        self.subscribed.set()

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # a display problem must not kill paho's network thread
            logger.exception("subscriber: message handler failed")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Publish one message (operator commands) and wait until it is sent."""
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        info.wait_for_publish(timeout=30)
        return info.is_published()

    def start(self, timeout: float = 10.0) -> bool:
        """Connect and start the network thread; True once subscribed within ``timeout``."""
        if self._v5_clean_start is None:
            self._client.connect_async(self._host, self._port, keepalive=30)
        else:
            self._client.connect_async(self._host, self._port, keepalive=30,
                                       clean_start=self._v5_clean_start)
        self._client.loop_start()
        return self.subscribed.wait(timeout)

    def stop(self) -> None:
        """Disconnect and join the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
