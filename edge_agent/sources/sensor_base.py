"""Pieces every sensor reader shares: the reader protocol, sample chunks, URI and line parsing.

A *reader* turns one kind of device or file into chunks of samples; the
:class:`~edge_agent.sources.sensor.SensorSource` cuts the chunks into windows. Readers know
nothing about windows, normalisation or queues.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_agent.sensor_uri import SensorUri, parse_sensor_uri

__all__ = ["Chunk", "LineParser", "LineSplitter", "SampleReader", "SensorUri",
           "parse_sensor_uri"]

MAX_LINE_BYTES = 64 * 1024  # a longer "line" is garbage (wrong baud rate, binary data)
TIMESTAMP_NAMES = frozenset({"t", "ts", "time", "timestamp"})


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive samples from a reader.

    Attributes:
        t: (n,) float64 timestamps in seconds; NaN where the reader has none.
        v: (n, channels) float32 sample values.
    """

    t: np.ndarray
    v: np.ndarray

    def __len__(self) -> int:
        return int(self.v.shape[0])


class SampleReader(Protocol):
    """One kind of sensor input, used by one thread at a time.

    Attributes:
        live: True for devices and sockets (read on a thread, newest window wins); False for
            files and generators (read in order, paced by the source).
        sample_rate: samples per second when the reader knows it, else None.
        bad_lines: malformed lines or records seen and skipped so far.
    """

    @property
    def live(self) -> bool:
        """Whether this is a live device or stream."""
        ...

    @property
    def sample_rate(self) -> float | None:
        """Samples per second, when known."""
        ...

    @property
    def bad_lines(self) -> int:
        """Malformed lines or records skipped so far."""
        ...

    def open(self) -> None:
        """Open the device or file; raise SourceError when it cannot be opened."""
        ...

    def read_chunk(self, timeout: float) -> Chunk | None:
        """Samples that arrived, or None after ``timeout`` seconds without any.

        Raises:
            EOFError: a finite input has ended.
            SourceError: the device failed.
        """
        ...

    def rewind(self) -> None:
        """Start a finite input again from the beginning (``loop: true``)."""
        ...

    def close(self) -> None:
        """Release the device or file; safe to call twice."""
        ...


class LineSplitter:
    """Bytes in, complete text lines out; overlong lines are reported as bad."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.overlong = 0

    def feed(self, data: bytes) -> list[str]:
        """Add received bytes and return the complete lines (without line endings)."""
        self._buf.extend(data)
        lines: list[str] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            lines.append(raw.decode("utf-8", errors="replace").strip("\r\x00 \t"))
        if len(self._buf) > MAX_LINE_BYTES:
            self._buf.clear()
            self.overlong += 1
        return lines

    def flush(self) -> list[str]:
        """The last line when the input ended without a newline."""
        rest = bytes(self._buf).decode("utf-8", errors="replace").strip("\r\x00 \t")
        self._buf.clear()
        return [rest] if rest else []


class LineParser:
    """Parses text lines into samples: separated numbers, or JSON ``{"t": .., "v": [..]}``.

    A separated line holds ``channels`` numbers, preceded by a timestamp when the header line
    named the first column ``t``, ``ts``, ``time`` or ``timestamp``. A JSON line holds ``v``
    (a number or a list of ``channels`` numbers) and optionally ``t`` (seconds). Lines that do
    not fit are counted in ``bad_lines`` and skipped; empty lines and ``#`` comments are ignored.

    Args:
        channels: values per sample.
        separator: the column separator (also accepted: surrounding whitespace).
        allow_header: accept one non-numeric first line as a header (files).
    """

    def __init__(self, channels: int, separator: str = ",", *, allow_header: bool = True) -> None:
        self.channels = channels
        self.separator = separator
        self.bad_lines = 0
        self.has_time_column = False
        self._allow_header = allow_header
        self._header_allowed = allow_header
        self._seen_data = False

    def reset(self) -> None:
        """Forget the header (the next first line may be a header again)."""
        self._seen_data = False
        self._header_allowed = self._allow_header
        self.has_time_column = False

    def parse(self, line: str) -> tuple[float, np.ndarray] | None:
        """``(t or NaN, (channels,) values)``, or None for a skipped line."""
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        sample = self._parse_json(line) if line.startswith("{") else self._parse_columns(line)
        if sample is None:
            self.bad_lines += 1
        else:
            self._seen_data = True
        return sample

    def _parse_columns(self, line: str) -> tuple[float, np.ndarray] | None:
        sep = self.separator if self.separator.strip() else None  # " " or "\t": any whitespace
        cols = [c.strip() for c in line.split(sep)]
        try:
            numbers = [float(c) for c in cols]
        except ValueError:
            if not self._seen_data and self._header_allowed:
                self._header_allowed = False
                self._seen_data = True
                self.has_time_column = cols[0].lower() in TIMESTAMP_NAMES
                self.bad_lines -= 1  # a header is not a bad line (parse() counts None)
            return None
        t = math.nan
        if self.has_time_column:
            if not numbers:
                return None
            t, numbers = numbers[0], numbers[1:]
        if len(numbers) != self.channels or not all(map(math.isfinite, numbers)):
            return None
        return t, np.asarray(numbers, dtype=np.float32)

    def _parse_json(self, line: str) -> tuple[float, np.ndarray] | None:
        try:
            obj = json.loads(line)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        v = obj.get("v", obj.get("values"))
        t = obj.get("t", obj.get("ts", math.nan))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, list) or len(v) != self.channels:
            return None
        try:
            values = np.asarray([float(x) for x in v], dtype=np.float32)
            t = float(t) if t is not None else math.nan
        except (TypeError, ValueError):
            return None
        if not np.all(np.isfinite(values)):
            return None
        return t, values


def lines_to_chunk(parser: LineParser, lines: list[str], clock: float | None) -> Chunk | None:
    """Parse ``lines``; samples without their own timestamp get ``clock`` (or NaN)."""
    ts: list[float] = []
    vs: list[np.ndarray] = []
    for line in lines:
        sample = parser.parse(line)
        if sample is None:
            continue
        t, v = sample
        ts.append(clock if math.isnan(t) and clock is not None else t)
        vs.append(v)
    if not vs:
        return None
    return Chunk(np.asarray(ts, dtype=np.float64), np.stack(vs).astype(np.float32, copy=False))
