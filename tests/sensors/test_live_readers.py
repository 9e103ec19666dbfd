"""Live readers on their thread: a serial port emulated with a pty, standard input, a UNIX
socket; malformed lines are counted and skipped, the thread stops on close."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.sensor import SensorSource
from edge_agent.types import Frame
from tests.conftest import need_module

need_module("serial")


def cfg(uri: str, **kw: object) -> SensorSourceConfig:
    return SensorSourceConfig(type="sensor", uri=uri, **kw)


def collect(src: SensorSource, n: int, timeout: float = 10.0) -> list[Frame]:
    """Read until ``n`` windows arrived (each read waits at most 0.2 s)."""
    frames: list[Frame] = []
    for _ in range(int(timeout / 0.2)):
        f = src.read(0.2)
        if f is not None:
            frames.append(f)
            if len(frames) == n:
                break
    return frames


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        yield master, name
    finally:
        os.close(master)
        os.close(slave)


def test_serial_pty_good_windows_bad_lines_counted(pty_pair: tuple[int, str]) -> None:
    master, name = pty_pair
    src = SensorSource(cfg(f"serial://{name}?baud=9600", window=3, channels=2))
    src.open()
    try:
        assert src.live is True
        lines = ["", "1,2", "garbage", "3,4", "5", "\x00\xff\xfe", "5,6", "7,8,9",
                 '{"v": [7, 8]}', "inf,1", "9;10", "11,12", "13,14", "15,16"]
        os.write(master, ("\n".join(lines) + "\n").encode("latin-1"))
        frames = collect(src, 2)
    finally:
        src.close()
    # windows of 3 from the 7 good samples (newest wins: a window may be dropped when the
    # reader is faster than this loop; what arrives is in order and correct)
    good = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [11, 12], [13, 14], [15, 16]], np.float32)
    assert frames, "no window arrived"
    assert src.windows == 2
    for f in frames:
        start = f.index * 3
        np.testing.assert_array_equal(f.data, good[start:start + 3])
        assert f.timestamps is not None and f.timestamps.shape == (3,)
    assert len(frames) + src.dropped == 2
    assert src.bad_lines == 6  # garbage, "5", binary, "7,8,9", "inf,1", "9;10"


def test_serial_missing_port_is_a_source_error(tmp_path: Path) -> None:
    src = SensorSource(cfg(f"serial://{tmp_path}/ttyNONE"))
    with pytest.raises(SourceError, match="cannot open serial port"):
        src.open()
    src.close()


def test_serial_reopen_after_close(pty_pair: tuple[int, str]) -> None:
    master, name = pty_pair
    src = SensorSource(cfg(f"serial://{name}", window=1))
    for value in (1, 2):
        src.open()
        try:
            os.write(master, f"\n{value}\n".encode())
            (f,) = collect(src, 1)
            assert f.data[0, 0] == value
        finally:
            src.close()
    src.close()  # twice is fine


def test_stdin_lines_then_eof(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    stdin = os.fdopen(r, "r")
    monkeypatch.setattr(sys, "stdin", stdin)
    src = SensorSource(cfg("stdin:", window=2, channels=1))
    try:
        src.open()
        os.write(w, b"1\n2\nnope\n3\n4\n5")  # the last line has no newline
        os.close(w)
        frames = []
        with pytest.raises(EOFError):
            for _ in range(100):
                f = src.read(0.2)
                if f is not None:
                    frames.append(f)
        assert [f.data[:, 0].tolist() for f in frames] == [[1, 2], [3, 4]]
        assert src.bad_lines == 1
    finally:
        src.close()
        stdin.close()


def test_unix_socket_listens_and_accepts_producers(tmp_path: Path) -> None:
    path = tmp_path / "vib.sock"
    src = SensorSource(cfg(f"unix://{path}", window=2, channels=3, separator=" "))
    src.open()
    try:
        assert path.exists()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            c.sendall(b"1 2 3\n4 5 6\nbad\n")
            (f,) = collect(src, 1)
            np.testing.assert_array_equal(f.data, [[1, 2, 3], [4, 5, 6]])
        # the producer left; a second one connects and the stream goes on
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            c.sendall(b'{"t": 5.0, "v": [7, 8, 9]}\n{"t": 5.5, "v": [1, 1, 1]}\n')
            (f,) = collect(src, 1)
            np.testing.assert_array_equal(f.data, [[7, 8, 9], [1, 1, 1]])
            np.testing.assert_array_equal(f.timestamps, [5.0, 5.5])
        assert src.bad_lines == 1
    finally:
        src.close()
    assert not path.exists()


def test_live_queue_newest_wins_and_counts_drops(tmp_path: Path) -> None:
    path = tmp_path / "fast.sock"
    src = SensorSource(cfg(f"unix://{path}", window=1))
    src.open()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            c.sendall("".join(f"{i}\n" for i in range(50)).encode())
            # nobody reads until all 50 windows went through the queue
            done = threading.Event()
            for _ in range(100):
                if src.windows == 50:
                    done.set()
                    break
                done.wait(0.05)
            assert done.is_set()
            got = collect(src, 2)
        assert [f.data[0, 0] for f in got] == [46, 47]
        assert src.dropped == 46
    finally:
        src.close()
