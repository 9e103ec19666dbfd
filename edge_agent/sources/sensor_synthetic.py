"""A seeded generator of sensor samples, for demos and tests.

``synthetic:<shape>?key=value&...`` with shape ``sine`` (default), ``ramp`` or ``noise``:

- ``sine``: ``amplitude * sin(2π freq t + phase_c) + offset`` (channel c has phase 2πc/C).
- ``ramp``: ``start, start+step, ...`` wrapping back to ``start`` past ``stop`` (x values for
  regression models such as hello_world: ``synthetic:ramp?start=0&stop=6.28&step=0.1``).
- ``noise``: Gaussian noise only.

Common keys: ``noise`` (std of added Gaussian noise, default 0), ``seed`` (default 0),
``rate`` (samples/s, default: the config's sample_rate or 100), ``samples`` (stop after this
many: a finite source; default endless), ``anomaly_every`` (inject an anomaly every N samples),
``anomaly_len`` (samples per anomaly, default 5), ``anomaly_gain`` (added offset in units of
amplitude, default 5).
"""

from __future__ import annotations

import numpy as np

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import ConfigError
from edge_agent.sources.sensor_base import Chunk, SensorUri

CHUNK_SAMPLES = 1024
SHAPES = ("sine", "ramp", "noise")


class SyntheticSensorReader:
    """Generates samples deterministically from the URI's parameters (see module docs)."""

    live = False
    bad_lines = 0

    def __init__(self, uri: SensorUri, channels: int, sample_rate: float | None) -> None:
        shape = uri.path or "sine"
        if shape not in SHAPES:
            raise ConfigError(f"source.uri: unknown synthetic shape {shape!r} "
                              f"(expected one of {', '.join(SHAPES)})")
        try:
            self.shape = shape
            self.sample_rate = uri.get_float("rate", sample_rate) or 100.0
            self.freq = uri.get_float("freq", 1.0) or 0.0
            self.amplitude = uri.get_float("amplitude", 1.0) or 0.0
            self.offset = uri.get_float("offset", 0.0) or 0.0
            self.noise = uri.get_float("noise", 0.0) or 0.0
            self.seed = uri.get_int("seed", 0) or 0
            self.samples = uri.get_int("samples", None)
            self.anomaly_every = uri.get_int("anomaly_every", 0) or 0
            self.anomaly_len = uri.get_int("anomaly_len", 5) or 0
            self.anomaly_gain = uri.get_float("anomaly_gain", 5.0) or 0.0
            self.start = uri.get_float("start", 0.0) or 0.0
            self.stop = uri.get_float("stop", 1.0) or 0.0
            self.step = uri.get_float("step", 0.01) or 0.0
        except ValueError as exc:
            raise ConfigError(f"source.uri: invalid synthetic parameter ({exc})") from None
        if self.shape == "ramp" and (self.step <= 0 or self.stop <= self.start):
            raise ConfigError("source.uri: a synthetic ramp needs step > 0 and stop > start")
        self.channels = channels
        self._rng = np.random.default_rng(self.seed)
        self._index = 0

    def open(self) -> None:
        """Start from sample 0 with a fresh seeded generator."""
        self.rewind()

    def rewind(self) -> None:
        """Start again: the same seed gives the same samples."""
        self._rng = np.random.default_rng(self.seed)
        self._index = 0

    def read_chunk(self, timeout: float) -> Chunk | None:
        """The next CHUNK_SAMPLES samples (fewer at the end of a finite run)."""
        n = CHUNK_SAMPLES
        if self.samples is not None:
            n = min(n, self.samples - self._index)
            if n <= 0:
                raise EOFError("synthetic samples exhausted")
        i = np.arange(self._index, self._index + n, dtype=np.float64)
        t = i / self.sample_rate
        c = np.arange(self.channels, dtype=np.float64)
        if self.shape == "sine":
            phase = 2 * np.pi * c / self.channels
            v = self.amplitude * np.sin(2 * np.pi * self.freq * t[:, None] + phase[None, :])
            v += self.offset
        elif self.shape == "ramp":
            steps = max(1, round((self.stop - self.start) / self.step) + 1)
            x = self.start + (i % steps) * self.step
            v = np.repeat(x[:, None], self.channels, axis=1)
        else:
            v = np.full((n, self.channels), self.offset, dtype=np.float64)
        if self.noise > 0:
            v = v + self._rng.normal(0.0, self.noise, size=v.shape)
        if self.anomaly_every > 0:
            in_anomaly = (i % self.anomaly_every) >= (self.anomaly_every - self.anomaly_len)
            v[in_anomaly] += self.anomaly_gain * (self.amplitude or 1.0)
        self._index += n
        return Chunk(t, v.astype(np.float32))

    def close(self) -> None:
        """Nothing to release."""


def synthetic_reader(uri: SensorUri, cfg: SensorSourceConfig) -> SyntheticSensorReader:
    """``synthetic:<shape>?...``."""
    return SyntheticSensorReader(uri, cfg.channels, cfg.sample_rate)
