"""How the transport reports a broker it cannot reach: the reason in words, at once, then at a
falling rate while the outage lasts (the e2e test covers the daemon's log and reconnect line)."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from pathlib import Path

import pytest

from edge_agent.config import make_config
from edge_agent.mqtt import client as client_mod
from edge_agent.mqtt.client import MqttTransport, describe_connack, describe_connect_error
from tests.broker import free_port


def test_reasons_in_words() -> None:
    assert "connection refused" in describe_connect_error(ConnectionRefusedError(111, "x"), "h")
    dns = describe_connect_error(socket.gaierror(-2, "Name or service not known"), "broker.lan")
    assert dns.startswith("DNS:") and "broker.lan" in dns
    assert describe_connect_error(TimeoutError("timed out"), "h").startswith("timeout")
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "unable to get local issuer certificate"
    assert describe_connect_error(cert, "h") == (
        "TLS: the broker's certificate was not accepted (unable to get local issuer "
        "certificate)")
    assert describe_connect_error(ssl.SSLError(1, "wrong version"), "h").startswith("TLS:")
    assert describe_connect_error(None, "h") == "connection failed (no reason given)"

    class Code:
        def __init__(self, value: int, text: str) -> None:
            self.value, self.text = value, text

        def __str__(self) -> str:
            return self.text

    assert describe_connack(Code(0x87, "Not authorized")).startswith("not authorised")
    assert describe_connack(Code(5, "Not authorised")).startswith("not authorised")
    assert describe_connack(Code(0x86, "Bad user name or password")).startswith(
        "not authorised")
    assert describe_connack(Code(0x88, "Server unavailable")).startswith("refused")


def test_a_persisting_outage_is_logged_at_a_falling_rate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod, "REPORT_FIRST_S", 0.3)
    port = free_port()
    cfg = make_config(state_dir=str(tmp_path),
                      mqtt={"host": "127.0.0.1", "port": port, "reconnect_max_s": 0.05})
    transport = MqttTransport(cfg, tmp_path)
    caplog.set_level(logging.WARNING, logger="edge_agent.mqtt.client")
    transport.start()
    try:
        time.sleep(0.3)
        st = transport.stats()
        assert st["connected"] is False and st["down_since"] is not None
        assert st["down_since"] <= time.time()
        assert st["last_error"].startswith("connection refused")
        time.sleep(2.7)
        failures = transport.stats()["connect_failures"]
    finally:
        transport.stop(1)
    lines = [r.getMessage() for r in caplog.records if f"127.0.0.1:{port}" in r.getMessage()]
    first = [m for m in lines if m.startswith("cannot connect")]
    later = [m for m in lines if m.startswith(f"broker 127.0.0.1:{port} still unreachable")]
    assert len(first) == 1 and lines[0] == first[0], lines
    # reports after 0.3, 0.9, 2.1 s (intervals doubling), never one per attempt
    assert 2 <= len(later) <= 4, lines
    assert failures >= 3 * len(lines), (failures, lines)
    assert all("connection refused" in m and "outbox depth" in m for m in later), later
