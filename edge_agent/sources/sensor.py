"""The sensor source: windows of numeric samples from files, devices, sockets and generators.

``SensorSource(cfg)`` reads samples through a *reader* chosen by the URI scheme of
``cfg.uri`` and hands out :class:`~edge_agent.types.Frame` objects whose ``data`` is a
``(window, channels)`` float32 window (or ``(49, 40)`` micro-frontend features) advanced by
``hop`` samples, and whose ``timestamps`` are the per-sample source timestamps (seconds).
``Frame.ts`` is the wall-clock time at which the window was complete.

URIs (see SENSORS.md): ``/path/x.csv`` or ``file:///path/x.jsonl`` (also ``.wav``),
``serial:///dev/ttyUSB0?baud=115200``, ``iio:///sys/bus/iio/devices/iio:device0``,
``stdin:``, ``unix:///run/x.sock``, ``synthetic:sine?freq=1``, ``wav:///x.wav``,
``alsa:default``.

Files and generators are read in order in :meth:`SensorSource.read`, paced by their own
timestamps (``realtime: true``), by ``fps`` (windows per second), or as fast as the pipeline
takes them; their end raises EOFError (``loop: true`` replays them, each pass starting a new
window). Live readers (serial, IIO, stdin, UNIX socket, ALSA) run on a reader thread started
by :meth:`open` and joined by :meth:`close`; windows reach :meth:`read` through a bounded
queue in which the newest window wins and the discarded ones are counted in ``dropped``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from edge_agent.config import NormalizeConfig, SensorSourceConfig
from edge_agent.errors import ConfigError, SourceError
from edge_agent.registry import Registry
from edge_agent.sources.audio_features import MICRO_FRONTEND_CHANNELS, micro_frontend_features
from edge_agent.sources.sensor_base import Chunk, SampleReader, parse_sensor_uri
from edge_agent.types import Frame

logger = logging.getLogger(__name__)

QUEUE_SIZE = 4  # windows; a little more than frames' 2 to absorb a device's bursts
POLL_S = 0.1
JOIN_TIMEOUT_S = 5.0


class Windower:
    """Cuts a stream of chunks into windows of ``window`` samples, ``hop`` samples apart."""

    def __init__(self, window: int, hop: int, channels: int) -> None:
        self.window = window
        self.hop = hop
        self._t = np.zeros(0, np.float64)
        self._v = np.zeros((0, channels), np.float32)
        self._skip = 0  # samples still to discard when hop > window

    def push(self, chunk: Chunk) -> None:
        """Append samples."""
        t, v = chunk.t, chunk.v
        if self._skip:
            k = min(self._skip, len(v))
            t, v, self._skip = t[k:], v[k:], self._skip - k
        self._t = np.concatenate([self._t, t]) if len(self._t) else t
        self._v = np.concatenate([self._v, v]) if len(self._v) else v

    def pop(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next complete window ``(t (window,), v (window, channels))``, or None."""
        if len(self._v) < self.window:
            return None
        t, v = self._t[: self.window].copy(), self._v[: self.window].copy()
        step = min(self.hop, len(self._v))
        self._t, self._v = self._t[step:], self._v[step:]
        self._skip = self.hop - step
        return t, v

    def reset(self) -> None:
        """Drop buffered samples (a new pass of a looped file starts a new window)."""
        self._t = self._t[:0]
        self._v = self._v[:0]
        self._skip = 0


def make_normalizer(cfg: NormalizeConfig, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function that normalises a (n, channels) window per channel.

    ``meanstd``: ``(x - mean) / std``; ``minmax``: ``(x - min) / (max - min)``, so 0..1 over
    the configured range. One value applies to every channel.

    Raises:
        ConfigError: missing values, or a count that is neither 1 nor ``channels``.
    """
    if cfg.mode == "none":
        return lambda x: x
    keys = ("mean", "std") if cfg.mode == "meanstd" else ("min", "max")
    arrays = []
    for key in keys:
        values = getattr(cfg, key)
        if len(values) not in (1, channels):
            raise ConfigError(f"source.normalize.{key}: {len(values)} value(s) for {channels} "
                              f"channel(s) (give 1 or {channels})")
        arrays.append(np.asarray(values, np.float32))
    a, b = arrays
    if cfg.mode == "meanstd":
        if np.any(b == 0):
            raise ConfigError("source.normalize.std: must not be 0")
        return lambda x: (x - a) / b
    if np.any(b <= a):
        raise ConfigError("source.normalize: max must be greater than min for every channel")
    span = b - a
    return lambda x: (x - a) / span


SENSOR_READERS = Registry("sensor_readers", {
    "file": "edge_agent.sources.sensor_file:file_reader",
    "wav": "edge_agent.sources.sensor_audio:wav_reader",
    "alsa": "edge_agent.sources.sensor_audio:alsa_reader",
    "synthetic": "edge_agent.sources.sensor_synthetic:synthetic_reader",
    "serial": "edge_agent.sources.sensor_serial:serial_reader",
    "iio": "edge_agent.sources.sensor_iio:iio_reader",
    "stdin": "edge_agent.sources.sensor_stream:stdin_reader",
    "unix": "edge_agent.sources.sensor_stream:unix_reader",
}, extras={"serial": "serial"})
"""URI scheme -> ``reader(uri, cfg)``; a module is imported only when its scheme is used."""


def make_reader(cfg: SensorSourceConfig) -> SampleReader:
    """The reader for ``cfg.uri``, chosen through :data:`SENSOR_READERS` by the URI's scheme."""
    uri = parse_sensor_uri(cfg.uri)
    scheme = "wav" if uri.scheme == "file" and uri.path.lower().endswith(".wav") else uri.scheme
    if scheme not in SENSOR_READERS.kinds():  # the config refuses these; kept for direct use
        raise ConfigError(f"source.uri: unknown sensor scheme {scheme!r} (expected a file "
                          "path, file:, wav:, alsa:, synthetic:, serial:, iio:, stdin: or unix:)")
    reader: SampleReader = SENSOR_READERS.get(scheme)(uri, cfg)
    return reader


class SensorSource:
    """Windows of sensor samples as frames (see the module docs).

    Attributes:
        dropped: windows discarded because the pipeline was busy (live readers).
        live: whether the reader is a live device or stream.
        bad_lines: malformed lines or records skipped so far.
        windows: windows produced so far (delivered plus dropped).
    """

    def __init__(self, cfg: SensorSourceConfig) -> None:
        """Check the config; nothing is opened yet.

        Raises:
            ConfigError: an unknown scheme or bad normalisation values.
        """
        self.cfg = cfg
        self.window = cfg.window
        self.hop = cfg.hop or cfg.window
        self.dropped = 0
        self.windows = 0
        self._features: Callable[[np.ndarray, float], np.ndarray] | None = None
        out_channels = cfg.channels
        if cfg.features == "micro_frontend":
            out_channels = MICRO_FRONTEND_CHANNELS
            if cfg.channels != 1:
                raise ConfigError("source.features: micro_frontend works on mono audio "
                                  f"(channels: 1), not channels: {cfg.channels}")
        self._normalize = make_normalizer(cfg.normalize, out_channels)
        self._reader: SampleReader = make_reader(cfg)
        self.live = bool(self._reader.live)
        self._windower = Windower(self.window, self.hop, cfg.channels)
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._eof = False
        self._opened = False
        self._pending: Frame | None = None
        self._due = 0.0
        self._anchor: tuple[float, float] | None = None  # (monotonic, source t) for realtime
        self._windows_at_rewind = 0

    @property
    def bad_lines(self) -> int:
        """Malformed lines or records skipped so far."""
        return int(self._reader.bad_lines)  # the reader outlives close/open: counts add up

    def open(self) -> None:
        """Open the reader; start the reader thread for live readers.

        Raises:
            SourceError: the file, device or socket cannot be opened.
            PluginUnavailableError: an optional dependency (pyserial, arecord) is missing.
        """
        if self._opened:
            self.close()
        if self.cfg.features == "micro_frontend" and self._features is None:
            self._features = micro_frontend_features
        self._reader.open()
        self._opened = True
        if self.cfg.features == "micro_frontend":
            rate = self._reader.sample_rate or self.cfg.sample_rate
            if rate is None or self.window < round(0.03 * rate):
                self.close()
                raise SourceError(
                    f"micro_frontend needs a known sample rate and a window of at least 30 ms "
                    f"({'unknown rate' if rate is None else f'{round(0.03 * rate)} samples'}); "
                    f"window is {self.window} (1 s at 16 kHz: window: 16000)")
        self._windower.reset()
        self._queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop.clear()
        self._error = None
        self._eof = False
        self._pending = None
        self._anchor = None
        self._windows_at_rewind = self.windows
        self._due = time.monotonic()
        if self.live:
            self._thread = threading.Thread(target=self._run, name="sensor-reader", daemon=True)
            self._thread.start()

    def read(self, timeout: float) -> Frame | None:
        """The next window, or None when none is ready within ``timeout`` seconds.

        Raises:
            SourceError: the device failed (the pipeline closes and reopens the source).
            EOFError: a file, generator or standard input has ended.
        """
        if not self._opened:
            raise SourceError("sensor source is not open")
        if self.live:
            return self._read_live(timeout)
        return self._read_file(timeout)

    def close(self) -> None:
        """Stop the reader thread and release the reader; safe to call twice."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                logger.warning("sensor reader thread for %s did not stop within %.0f s",
                               self.cfg.uri, JOIN_TIMEOUT_S)
        if self._opened:
            self._reader.close()
            self._opened = False

    # ------------------------------------------------------------------ live readers

    def _run(self) -> None:
        reader = self._reader
        try:
            while not self._stop.is_set():
                try:
                    chunk = reader.read_chunk(POLL_S)
                except EOFError:
                    self._eof = True
                    return
                if chunk is None or len(chunk) == 0:
                    continue
                self._windower.push(chunk)
                while (w := self._windower.pop()) is not None:
                    self._offer(self._frame(*w))
        except (SourceError, OSError) as exc:
            self._error = str(exc)
        except Exception as exc:  # the thread's loop boundary: report, let the pipeline reopen
            logger.exception("sensor reader for %s failed", self.cfg.uri)
            self._error = f"sensor reader failed: {exc}"

    def _offer(self, frame: Frame) -> None:
        while True:
            try:
                self._queue.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _read_live(self, timeout: float) -> Frame | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            pass
        if self._error is not None:
            raise SourceError(self._error)
        if self._eof and self._queue.empty():
            raise EOFError(self.cfg.uri)
        return None

    # ------------------------------------------------------------------ files, generators

    def _next_window(self) -> Frame:
        while True:
            w = self._windower.pop()
            if w is not None:
                return self._frame(*w)
            try:
                chunk = self._reader.read_chunk(0.0)
            except EOFError:
                # a looped file whose last pass gave no window would spin forever: stop
                if not self.cfg.loop or self.windows == self._windows_at_rewind:
                    raise
                self._windows_at_rewind = self.windows
                self._reader.rewind()
                self._windower.reset()
                self._anchor = None
                continue
            if chunk is not None and len(chunk):
                self._windower.push(chunk)

    def _read_file(self, timeout: float) -> Frame | None:
        if self._pending is None:
            self._pending = self._next_window()
        frame = self._pending
        due = self._due_time(frame)
        wait = due - time.monotonic()
        if wait > 0:
            self._stop.wait(min(wait, timeout))
            if time.monotonic() < due:
                return None
        self._pending = None
        if self.cfg.fps:
            self._due = max(due + 1.0 / self.cfg.fps, time.monotonic() - 1.0)
        return frame

    def _due_time(self, frame: Frame) -> float:
        if self.cfg.realtime and frame.timestamps is not None:
            last = float(frame.timestamps[-1])
            if self._anchor is None:
                self._anchor = (time.monotonic(), float(frame.timestamps[0]))
            return self._anchor[0] + (last - self._anchor[1])
        if self.cfg.fps:
            return self._due
        return 0.0

    # ------------------------------------------------------------------ both

    def _frame(self, t: np.ndarray, v: np.ndarray) -> Frame:
        rate = self._reader.sample_rate or self.cfg.sample_rate
        if self._features is not None:
            if rate is None:
                raise SourceError("micro_frontend features need a sample rate (a WAV file or "
                                  "sample_rate in the source)")
            data = self._features(v[:, 0], float(rate))
            # one timestamp per feature frame: the start of its analysis window
            stride = max(1, round(rate * 0.02))
            t = t[:: stride][: len(data)]
        else:
            data = v
        data = np.ascontiguousarray(self._normalize(data), dtype=np.float32)
        ts = None if math.isnan(float(t[0])) or np.isnan(t).any() else t
        index = self.windows
        self.windows += 1
        return Frame(index=index, ts=time.time(), data=data, timestamps=ts)
