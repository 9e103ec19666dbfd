"""Sensor samples from a CSV or JSON-lines file (finite; replayed in order)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import IO

import numpy as np

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sensor_uri import SensorUri
from edge_agent.sources.sensor_base import Chunk, LineParser

CHUNK_LINES = 1024


class FileSensorReader:
    """Reads a text file of samples: one sample per line (see :class:`LineParser`).

    Lines without a timestamp get ``index / sample_rate`` seconds when the rate is known,
    else NaN (the window then has no per-sample timestamps and cannot be replayed
    ``realtime``).

    Args:
        path: the file.
        channels: values per sample.
        separator: column separator for CSV lines.
        sample_rate: samples per second, for files without a timestamp column.
    """

    live = False

    def __init__(self, path: str, channels: int, separator: str = ",",
                 sample_rate: float | None = None) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self._parser = LineParser(channels, separator, allow_header=True)
        self._file: IO[str] | None = None
        self._index = 0
        self._bad_before = 0  # bad lines of earlier passes (loop)

    @property
    def bad_lines(self) -> int:
        """Malformed lines skipped so far (over every pass of a looped file)."""
        return self._bad_before + self._parser.bad_lines

    def open(self) -> None:
        """Open the file; SourceError when it cannot be read."""
        try:
            self._file = self.path.open("r", encoding="utf-8", errors="replace")
        except OSError as exc:
            raise SourceError(f"cannot open sensor file {self.path}: {exc.strerror or exc}") \
                from None
        self._index = 0

    def read_chunk(self, timeout: float) -> Chunk | None:
        """Up to CHUNK_LINES samples; EOFError at the end of the file."""
        if self._file is None:
            raise SourceError("sensor file is not open")
        ts: list[float] = []
        vs: list[np.ndarray] = []
        read_any = False
        for _ in range(CHUNK_LINES):
            line = self._file.readline()
            if not line:
                break
            read_any = True
            sample = self._parser.parse(line)
            if sample is None:
                continue
            t, v = sample
            if math.isnan(t) and self.sample_rate:
                t = self._index / self.sample_rate
            self._index += 1
            ts.append(t)
            vs.append(v)
        if not read_any:
            raise EOFError(str(self.path))
        if not vs:
            return None
        return Chunk(np.asarray(ts, dtype=np.float64), np.stack(vs))

    def rewind(self) -> None:
        """Read the file again from its first line."""
        self._bad_before += self._parser.bad_lines
        self._parser.bad_lines = 0
        self._parser.reset()
        if self._file is not None:
            self._file.seek(0)
        self._index = 0

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def file_reader(uri: SensorUri, cfg: SensorSourceConfig) -> FileSensorReader:
    """``/path``, ``file:///path``: a text file (registered in ``SENSOR_READERS``)."""
    return FileSensorReader(uri.path, cfg.channels, cfg.separator, cfg.sample_rate)
