"""How the paho client is built: protocol, session, credentials, TLS, queue bounds.

Secrets come from files: ``mqtt.password_file``, else the systemd credential
``$CREDENTIALS_DIRECTORY/mqtt-password`` (``LoadCredential=mqtt-password:...``).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import AgentConfig, MqttConfig
from edge_agent.errors import ConfigError

SESSION_EXPIRY_S = 7 * 24 * 3600
"""MQTT 5 session expiry: the broker keeps our command subscription and queued commands."""

CREDENTIAL_NAME = "mqtt-password"

_paho_logger = logging.getLogger("edge_agent.mqtt.paho")


def _log_paho(client: paho.Client, userdata: object, level: int, buf: str) -> None:
    """paho's own log: a swallowed callback exception is an error, the rest is debug noise
    (socket errors during an outage are reported once by the transport)."""
    if buf.startswith("Caught exception"):
        _paho_logger.error("paho: %s", buf)
    else:
        _paho_logger.debug("paho: %s", buf)


def read_password(cfg: MqttConfig) -> str | None:
    """The broker password: ``mqtt.password_file``, else ``$CREDENTIALS_DIRECTORY/mqtt-password``.

    Raises:
        ConfigError: the configured password file cannot be read.
    """
    path = cfg.password_file
    if path is None:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds or not (Path(creds) / CREDENTIAL_NAME).is_file():
            return None
        path = Path(creds) / CREDENTIAL_NAME
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {exc}") from None


def build_client(config: AgentConfig, window: int) -> paho.Client:
    """A paho client for ``config``: persistent session, bounded queues, credentials, TLS.

    Args:
        config: the agent config (``mqtt`` section and ``client_id``).
        window: durable messages the transport keeps in flight; paho's in-flight window and
            queue get room for non-durable messages on top.

    Raises:
        ConfigError: unreadable password file or certificates.
    """
    cfg = config.mqtt
    v5 = cfg.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else False,  # 3.1.1: persistent session
    )
    # An exception escaping a callback would end paho's network thread (and every reconnect):
    # paho logs it instead. Our callbacks catch their own errors too.
    client.suppress_exceptions = True
    client.on_log = _log_paho
    client.max_inflight_messages_set(window + 20)
    client.max_queued_messages_set(window + 1000)  # paho's default is unbounded
    if cfg.username:
        client.username_pw_set(cfg.username, read_password(cfg))
    if cfg.tls.enabled:
        try:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_certs),
                certfile=str(cfg.tls.certfile) if cfg.tls.certfile else None,
                keyfile=str(cfg.tls.keyfile) if cfg.tls.keyfile else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt.tls: cannot load certificates: {exc}") from None
        client.tls_insecure_set(cfg.tls.insecure)
    return client


def connect_properties(cfg: MqttConfig) -> Properties | None:
    """MQTT 5 CONNECT properties (session expiry, so the session outlives a disconnect)."""
    if cfg.protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    return props
