"""tests/system/relay.py, the program qemu's guestfwd starts for each guest connection in
``./dev arm64`` (``guestfwd=tcp:10.0.2.100:1883-cmd:...``): started the way qemu starts it (the
connection as its stdin, stdout and stderr), one after another, each relay carries an MQTT
CONNECT to a real mosquitto and its CONNACK back, and ends when the guest closes; a refused
port closes the guest's connection without writing anything into it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.broker import Mosquitto, free_port, mosquitto_binary
from tests.conftest import REPO

RELAY = REPO / "tests" / "system" / "relay.py"
# MQTT 3.1.1 CONNECT: clean session, keepalive 60 s, empty client id
CONNECT = bytes([0x10, 0x0C, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0])
CONNACK_OK = bytes([0x20, 0x02, 0x00, 0x00])


def _guest_connection(port: int) -> tuple[bytes, int]:
    """Open one 'guest' connection the way qemu does, send CONNECT, return what came back
    (until the relay closes or 4 bytes arrived) and the relay's exit status."""
    guest, qemu_side = socket.socketpair()
    with guest, qemu_side:
        fd = qemu_side.fileno()
        proc = subprocess.Popen([sys.executable, str(RELAY), str(port)],
                                stdin=fd, stdout=fd, stderr=fd)
        qemu_side.close()
        guest.settimeout(20)
        guest.sendall(CONNECT)
        got = b""
        while len(got) < len(CONNACK_OK):
            try:
                chunk = guest.recv(64)
            except ConnectionResetError:  # closed with our CONNECT unread: closed all the same
                break
            if not chunk:
                break
            got += chunk
        with contextlib.suppress(OSError):
            guest.shutdown(socket.SHUT_WR)  # the guest disconnects: the relay must end
        rc = proc.wait(20)
    return got, rc


@pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
def test_every_guest_connection_reaches_the_broker(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        for _ in range(3):
            got, rc = _guest_connection(broker.port)
            assert got == CONNACK_OK, f"CONNACK expected, got {got!r}"
            assert rc == 0
    finally:
        broker.stop()


def test_a_refused_port_closes_the_guest_connection_silently() -> None:
    got, rc = _guest_connection(free_port())
    assert got == b""  # nothing written into the guest's stream (not even a traceback)
    assert rc == 1
