"""How the paho client is built: protocol, session, credentials, TLS, queue bounds.

Secrets come from files: ``mqtt.password_file``, else the systemd credential
``$CREDENTIALS_DIRECTORY/mqtt-password`` (``LoadCredential=mqtt-password:...``).
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

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


def build_client(config: AgentConfig, window: int, *, client_id: str | None = None,
                 persistent: bool = True) -> paho.Client:
    """A paho client for ``config``: persistent session, bounded queues, credentials, TLS.

    Args:
        config: the agent config (``mqtt`` section and ``client_id``).
        window: durable messages the transport keeps in flight; paho's in-flight window and
            queue get room for non-durable messages on top.
        client_id: another client id than the agent's (a probe must not take over the
            agent's session); default ``config.client_id``.
        persistent: keep a session at the broker (3.1.1: clean_session false); a probe
            connects with a clean one.

    Raises:
        ConfigError: unreadable password file or certificates.
    """
    cfg = config.mqtt
    v5 = cfg.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or config.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else not persistent,  # 3.1.1: persistent session
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


def connect_properties(cfg: MqttConfig, max_packet: int | None = None) -> Properties | None:
    """MQTT 5 CONNECT properties: session expiry (so the session outlives a disconnect) and,
    when given, Maximum Packet Size: the broker drops (and never queues for us) any packet
    larger, so an oversized command costs the device nothing, not even its receipt."""
    if cfg.protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    if max_packet is not None:
        props.MaximumPacketSize = max_packet
    return props


ProbeOutcome = Literal["ok", "unreachable", "tls", "refused", "no_answer"]


def probe_broker(config: AgentConfig, timeout: float = 5.0) -> tuple[ProbeOutcome, str]:
    """Connect once the way the agent does, and say how it went.

    The client comes from :func:`build_client`, so the protocol (MQTT 5 or 3.1.1), TLS and
    credentials (``password_file`` or ``$CREDENTIALS_DIRECTORY``) are the agent's own; only the
    client id (``edge-agent-doctor-<pid>``) and a clean session differ, so the probe never
    takes over the agent's session.

    Returns:
        ``(outcome, detail)``: ``ok``, ``unreachable`` (TCP), ``tls`` (handshake),
        ``refused`` (CONNACK with a failure reason, e.g. bad user name or password) or
        ``no_answer`` (no CONNACK: not an MQTT listener, or another protocol version).

    Raises:
        ConfigError: unreadable password file or certificates.
    """
    cfg = config.mqtt
    client = build_client(config, 1, client_id=f"edge-agent-doctor-{os.getpid()}",
                          persistent=False)
    client.on_log = None
    answer: list[str | None] = []

    def on_connect(c: paho.Client, userdata: object, flags: object, reason: ReasonCode,
                   props: object) -> None:
        answer.append(str(reason) if reason.is_failure else None)

    client.on_connect = on_connect
    try:
        if cfg.protocol == "5":
            client.connect(cfg.host, cfg.port, keepalive=10, clean_start=True)
        else:
            client.connect(cfg.host, cfg.port, keepalive=10)
    except (ssl.SSLError, ssl.CertificateError) as exc:
        return "tls", f"TLS handshake failed: {exc}"
    except OSError as exc:
        return "unreachable", str(exc.strerror or exc)
    try:
        deadline = time.monotonic() + timeout
        while not answer and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        if not answer:
            return "no_answer", f"no CONNACK to an MQTT {cfg.protocol} CONNECT"
        if answer[0] is not None:
            return "refused", f"broker refused the connection: {answer[0]}"
        return "ok", f"MQTT {cfg.protocol} CONNECT accepted"
    finally:
        client.disconnect()
        client.loop(timeout=0.1)
        sock = client.socket()
        if sock is not None:
            sock.close()
