"""Line-protocol sensor streams on standard input and on a UNIX stream socket.

Both carry the line protocol of :class:`~edge_agent.sources.sensor_base.LineParser`: one
sample per line, ``channels`` numbers separated by ``separator``, or a JSON object
``{"t": seconds, "v": [..]}``. Samples without ``t`` are stamped with the wall clock when
they arrive. There is no header line on a stream: every non-numeric line counts as bad.

``unix:///run/edge-agent/vib.sock``: the agent *listens* on the path (it removes a stale
socket file first and again on close) and reads from one producer at a time; a producer
that connects while another is connected replaces it. When a producer disconnects the
agent waits for the next one (the stream never ends).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import stat
import sys
import time
from pathlib import Path

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sensor_uri import SensorUri
from edge_agent.sources.sensor_base import Chunk, LineParser, LineSplitter, lines_to_chunk

READ_BYTES = 65536


class StdinSensorReader:
    """Reads sample lines from standard input; the end of the input is the end of the source."""

    live = True
    sample_rate: float | None = None

    def __init__(self, channels: int, separator: str = ",") -> None:
        self._parser = LineParser(channels, separator, allow_header=False)
        self._splitter = LineSplitter()
        self._fd: int | None = None
        self._eof = False

    @property
    def bad_lines(self) -> int:
        """Malformed lines skipped so far."""
        return self._parser.bad_lines + self._splitter.overlong

    def open(self) -> None:
        """Use the process's standard input (sys.stdin at the time of the call)."""
        try:
            self._fd = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError) as exc:
            raise SourceError(f"standard input is not readable: {exc}") from None
        self._eof = False

    def read_chunk(self, timeout: float) -> Chunk | None:
        """The lines that arrived within ``timeout``; EOFError once the input has ended."""
        if self._fd is None:
            raise SourceError("stdin reader is not open")
        if self._eof:
            raise EOFError("standard input ended")
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(self._fd, READ_BYTES)
        if not data:
            self._eof = True
            return lines_to_chunk(self._parser, self._splitter.flush(), time.time())
        return lines_to_chunk(self._parser, self._splitter.feed(data), time.time())

    def rewind(self) -> None:
        """Standard input cannot be replayed."""

    def close(self) -> None:
        """Stop reading (standard input itself stays open: it belongs to the process)."""
        self._fd = None


class UnixSocketSensorReader:
    """Listens on a UNIX stream socket and reads sample lines from the connected producer."""

    live = True
    sample_rate: float | None = None

    def __init__(self, path: str, channels: int, separator: str = ",") -> None:
        self.path = Path(path)
        self._parser = LineParser(channels, separator, allow_header=False)
        self._splitter = LineSplitter()
        self._server: socket.socket | None = None
        self._client: socket.socket | None = None
        self.connections = 0

    @property
    def bad_lines(self) -> int:
        """Malformed lines skipped so far."""
        return self._parser.bad_lines + self._splitter.overlong

    def open(self) -> None:
        """Bind and listen on the socket path (replacing a stale socket file)."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(str(self.path))
            server.listen(2)
        except OSError as exc:
            server.close()
            raise SourceError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        self._server = server

    def read_chunk(self, timeout: float) -> Chunk | None:
        """Lines from the producer within ``timeout`` (accepting a new producer on the way)."""
        if self._server is None:
            raise SourceError("unix socket reader is not open")
        watch = [self._server] + ([self._client] if self._client is not None else [])
        ready, _, _ = select.select(watch, [], [], timeout)
        if self._server in ready:
            client, _ = self._server.accept()
            self._drop_client()
            self._client = client
            self.connections += 1
        if self._client is None or self._client not in ready:
            return None
        try:
            data = self._client.recv(READ_BYTES)
        except OSError:
            data = b""
        if not data:
            lines = self._splitter.flush()
            self._drop_client()
            return lines_to_chunk(self._parser, lines, time.time())
        return lines_to_chunk(self._parser, self._splitter.feed(data), time.time())

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._splitter.flush()  # a partial line of the old producer is not data

    def rewind(self) -> None:
        """A socket cannot be replayed."""

    def close(self) -> None:
        """Close the connection and the listening socket, and remove the socket file."""
        self._drop_client()
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def stdin_reader(uri: SensorUri, cfg: SensorSourceConfig) -> StdinSensorReader:
    """``stdin:``."""
    return StdinSensorReader(cfg.channels, cfg.separator)


def unix_reader(uri: SensorUri, cfg: SensorSourceConfig) -> UnixSocketSensorReader:
    """``unix:///run/x.sock`` (the agent listens)."""
    return UnixSocketSensorReader(uri.path, cfg.channels, cfg.separator)
