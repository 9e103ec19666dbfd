"""sd_notify datagrams and the health-gated watchdog, against a socket the test owns."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.notify import SystemdNotifier, Watchdog, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5.0)
    try:
        yield sock, path
    finally:
        sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_arrive_in_order(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = SystemdNotifier(path)
    assert n.enabled
    assert n.ready("2 pipelines\nrunning")
    assert _recv(sock) == ["READY=1", "STATUS=2 pipelines running"]
    assert n.watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]
    assert n.reloading()
    fields = _recv(sock)
    assert fields[0] == "RELOADING=1"
    assert fields[1].startswith("MONOTONIC_USEC=") and int(fields[1].split("=")[1]) > 0
    assert n.stopping()
    assert _recv(sock) == ["STOPPING=1"]
    n.close()
    n.close()
    assert n.sent == 4


def test_abstract_socket() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5.0)
    try:
        n = SystemdNotifier("@" + name)
        assert n.notify("READY=1")
        assert _recv(sock) == ["READY=1"]
        n.close()
    finally:
        sock.close()


def test_no_socket_is_a_no_op() -> None:
    n = SystemdNotifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert SystemdNotifier("").enabled is False


def test_env_socket_is_the_default(notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket
    assert SystemdNotifier(env={"NOTIFY_SOCKET": path}).socket_name == path


def test_dead_socket_does_not_raise(tmp_path: Path) -> None:
    n = SystemdNotifier(str(tmp_path / "gone.sock"))
    assert n.notify("READY=1") is False
    n.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # someone else's watchdog
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_watchdog_pings_only_while_healthy(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    healthy = threading.Event()
    healthy.set()
    dog = Watchdog(SystemdNotifier(path), healthy.is_set, interval=0.2)
    assert dog.period == pytest.approx(0.1)
    dog.start()
    try:
        for _ in range(3):
            assert _recv(sock) == ["WATCHDOG=1"]
        healthy.clear()
        # drain what was in flight, then nothing more arrives while unhealthy
        sock.settimeout(0.5)
        drained = 0
        while True:
            try:
                sock.recv(4096)
                drained += 1
            except TimeoutError:
                break
        assert drained <= 2
        assert dog.withheld >= 1
        healthy.set()
        sock.settimeout(5.0)
        assert _recv(sock) == ["WATCHDOG=1"]
    finally:
        dog.stop()
    dog.stop()


@pytest.mark.allow_errors
def test_watchdog_health_check_that_raises_withholds(
        notify_socket: tuple[socket.socket, str]) -> None:
    _, path = notify_socket

    def broken() -> bool:
        raise RuntimeError("boom")

    dog = Watchdog(SystemdNotifier(path), broken, interval=1.0)
    assert dog.check() is False
    assert dog.withheld == 1


def test_watchdog_off_without_interval_or_socket(tmp_path: Path) -> None:
    assert not Watchdog(SystemdNotifier(str(tmp_path / "s")), lambda: True, env={}).enabled
    dog = Watchdog(SystemdNotifier(""), lambda: True, interval=1.0)
    assert not dog.enabled
    dog.start()  # no thread
    dog.stop()
