"""Sensor samples from a serial port (pyserial), one sample per text line.

``serial:///dev/ttyUSB0?baud=115200``: the baud rate comes from the query, else from the
config's ``baudrate``. The line protocol is that of
:class:`~edge_agent.sources.sensor_base.LineParser` (``separator``-separated numbers or JSON
lines); samples are stamped with the wall clock when their line arrives. Lines cut by a
reconnect, a wrong baud rate or noise are counted in ``bad_lines`` and skipped. The first
line after opening is dropped (a device that streams continuously is caught mid-line), so a
producer should start with a newline or accept losing one sample.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import PluginUnavailableError, SourceError
from edge_agent.sensor_uri import SensorUri
from edge_agent.sources.sensor_base import Chunk, LineParser, LineSplitter, lines_to_chunk

READ_BYTES = 4096


def _serial_module() -> Any:
    try:
        # imported here: optional extra (edge-agent[serial]), only for serial sensors
        import serial
    except ModuleNotFoundError as exc:
        raise PluginUnavailableError(
            "serial sensor sources need pyserial; install it with: "
            "pip install 'edge-agent[serial]'") from exc
    return serial


class SerialSensorReader:
    """Reads sample lines from a serial device (or any pyserial URL such as ``rfc2217://``).

    Args:
        port: the device path, e.g. ``/dev/ttyUSB0`` or ``/dev/pts/3``.
        baudrate: the line speed.
        channels: values per sample.
        separator: the column separator.
    """

    live = True
    sample_rate: float | None = None

    def __init__(self, port: str, baudrate: int, channels: int, separator: str = ",") -> None:
        self._serial = _serial_module()
        self.port = port
        self.baudrate = baudrate
        self._parser = LineParser(channels, separator, allow_header=False)
        self._splitter = LineSplitter()
        self._dev: Any = None
        self._first = True

    @property
    def bad_lines(self) -> int:
        """Malformed lines skipped so far."""
        return self._parser.bad_lines + self._splitter.overlong

    def open(self) -> None:
        """Open the port; SourceError when it is missing or busy."""
        try:
            self._dev = self._serial.serial_for_url(self.port, baudrate=self.baudrate,
                                                    timeout=0.1)
        except (self._serial.SerialException, OSError, ValueError) as exc:
            raise SourceError(f"cannot open serial port {self.port}: {exc}") from None
        self._first = True  # the first line usually starts mid-line: dropped unless it is empty

    def read_chunk(self, timeout: float) -> Chunk | None:
        """The lines that arrived within about ``timeout`` seconds."""
        dev = self._dev
        if dev is None:
            raise SourceError("serial port is not open")
        try:
            dev.timeout = timeout
            data = dev.read(max(1, dev.in_waiting))
            if dev.in_waiting:
                data += dev.read(min(dev.in_waiting, READ_BYTES))
        except (self._serial.SerialException, OSError) as exc:
            raise SourceError(f"serial port {self.port} failed: {exc}") from None
        if not data:
            return None
        lines = self._splitter.feed(data)
        if self._first and lines:
            # the first line after opening usually starts mid-line: it is not a sample
            self._first = False
            lines = lines[1:] if not data.startswith(b"\n") else lines
        return lines_to_chunk(self._parser, lines, time.time())

    def rewind(self) -> None:
        """A port cannot be replayed."""

    def close(self) -> None:
        """Close the port."""
        if self._dev is not None:
            with contextlib.suppress(self._serial.SerialException, OSError):
                self._dev.close()
            self._dev = None


def serial_reader(uri: SensorUri, cfg: SensorSourceConfig) -> SerialSensorReader:
    """``serial:///dev/ttyX?baud=N`` (the URI's baud wins over ``baudrate``)."""
    baud = uri.get_int("baud", None) or cfg.baudrate
    return SerialSensorReader(uri.path, baud, cfg.channels, cfg.separator)
