"""Linux Industrial I/O (IIO) sensors: sysfs polling, or the buffered character device.

``iio:///sys/bus/iio/devices/iio:device0`` polls every ``in_*_raw`` file at ``sample_rate``
(default 10/s) and converts by the IIO ABI: ``value = (raw + offset) * scale``, where
``in_<chan>_scale``/``_offset`` override the shared ``in_<type>_scale``/``_offset`` and a
missing scale is 1, a missing offset 0. Query keys:

- ``channels=voltage0,voltage1``: which channels, in this order (default: every ``in_*_raw``,
  naturally sorted; their number must equal the config's ``channels``).
- ``rate=50``: polling rate (default: the config's ``sample_rate``, else 10).
- ``buffered=1``: use the buffered interface instead: enable the channels under
  ``scan_elements`` (``*_en``, ``*_index``, ``*_type`` such as ``le:s12/16>>4``), set
  ``buffer/length`` and ``buffer/enable`` and read whole scans from ``/dev/<device name>``
  (or ``dev=/path``). A ``timestamp`` channel, when present, gives per-sample timestamps
  (nanoseconds). The hardware sets the rate (``sampling_frequency``); writing the sysfs files
  needs the rights to do so (udev rule or root).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.sensor_base import Chunk, SensorUri

_TYPE = re.compile(r"^(?P<endian>be|le):(?P<sign>[su])(?P<bits>\d+)/(?P<storage>\d+)"
                   r"(?:X(?P<repeat>\d+))?(?:>>(?P<shift>\d+))?$")


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _read_float(path: Path, default: float) -> float:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return default


def _shared_name(chan: str) -> str:
    """The shared type of a channel: ``voltage0`` -> ``voltage``, ``accel_x`` -> ``accel``."""
    m = re.match(r"[a-z]+", chan)
    return m.group(0) if m else chan


def _scale_offset(root: Path, chan: str) -> tuple[float, float]:
    shared = _shared_name(chan)
    scale = _read_float(root / f"in_{chan}_scale", _read_float(root / f"in_{shared}_scale", 1.0))
    offset = _read_float(root / f"in_{chan}_offset",
                         _read_float(root / f"in_{shared}_offset", 0.0))
    return scale, offset


class IioSysfsReader:
    """Polls ``in_*_raw`` files of one IIO device (see module docs)."""

    live = True

    def __init__(self, uri: SensorUri, channels: int, sample_rate: float | None) -> None:
        self.root = Path(uri.path)
        self.bad_lines = 0
        self.sample_rate = uri.get_float("rate", sample_rate) or 10.0
        wanted = uri.query.get("channels")
        self._wanted = [c.strip() for c in wanted.split(",") if c.strip()] if wanted else None
        self.channels = channels
        self._paths: list[Path] = []
        self.names: list[str] = []
        self._scale = np.ones(0, np.float64)
        self._offset = np.zeros(0, np.float64)
        self._next = 0.0
        self._closed = threading.Event()

    def open(self) -> None:
        """Find the channels, read their scale and offset, and open their raw files."""
        if not self.root.is_dir():
            raise SourceError(f"IIO device folder not found: {self.root}")
        found = sorted((p.name[3:-4] for p in self.root.glob("in_*_raw")), key=_natural)
        names = self._wanted or found
        missing = [n for n in names if n not in found]
        if missing or not names:
            raise SourceError(f"IIO device {self.root}: no channel(s) {missing or names} "
                              f"(it has: {', '.join(found) or 'none'})")
        if len(names) != self.channels:
            raise SourceError(
                f"IIO device {self.root} has {len(names)} channels ({', '.join(names)}) but "
                f"the source is configured for channels: {self.channels}; set channels, or pick "
                f"them with ?channels=a,b in the uri")
        pairs = [_scale_offset(self.root, n) for n in names]
        self._scale = np.array([p[0] for p in pairs], np.float64)
        self._offset = np.array([p[1] for p in pairs], np.float64)
        self._paths = [self.root / f"in_{n}_raw" for n in names]
        unreadable = [p.name for p in self._paths if not os.access(p, os.R_OK)]
        if unreadable:
            raise SourceError(f"IIO device {self.root}: cannot read {', '.join(unreadable)} "
                              "(permissions: add the user to the iio group or a udev rule)")
        self.names = names
        self._closed.clear()
        self._next = time.monotonic()

    def read_chunk(self, timeout: float) -> Chunk | None:
        """One sample when it is due within ``timeout``, else None."""
        delay = self._next - time.monotonic()
        if delay > timeout:
            self._closed.wait(timeout)
            return None
        if delay > 0:
            self._closed.wait(delay)
        now = time.monotonic()
        # keep the grid, but never try to catch up on samples missed while busy
        self._next = max(self._next + 1.0 / self.sample_rate, now)
        raw = np.empty(len(self._paths), np.float64)
        try:
            for i, path in enumerate(self._paths):
                # reopened per sample: sysfs regenerates the value on every open-and-read
                with open(path, "rb") as f:
                    raw[i] = float(f.read(64).decode("ascii", "replace").strip())
        except ValueError:
            self.bad_lines += 1  # a garbled or empty reading: skip this sample
            return None
        except OSError as exc:
            raise SourceError(f"IIO device {self.root}: cannot read a channel: {exc}") from None
        v = ((raw + self._offset) * self._scale).astype(np.float32)
        return Chunk(np.array([time.time()]), v[None, :])

    def rewind(self) -> None:
        """A device cannot be replayed."""

    def close(self) -> None:
        """Stop waiting for the next sample."""
        self._closed.set()


@dataclass(frozen=True, slots=True)
class ScanChannel:
    """One enabled channel of a buffered IIO scan."""

    name: str
    index: int
    big_endian: bool
    signed: bool
    bits: int
    storage: int  # bits
    shift: int
    repeat: int = 1


def parse_scan_type(name: str, index: int, text: str) -> ScanChannel:
    """Parse a ``scan_elements/*_type`` string such as ``le:s12/16>>4``."""
    m = _TYPE.match(text.strip())
    if not m:
        raise SourceError(f"IIO channel {name}: unknown scan type {text.strip()!r}")
    return ScanChannel(name, index, m["endian"] == "be", m["sign"] == "s", int(m["bits"]),
                       int(m["storage"]), int(m["shift"] or 0), int(m["repeat"] or 1))


def scan_layout(chans: list[ScanChannel]) -> tuple[list[int], int]:
    """Byte offsets of each channel in a scan, and the scan size (IIO alignment rules)."""
    offsets: list[int] = []
    pos = 0
    largest = 1
    for c in chans:
        size = c.storage // 8
        pos = (pos + size - 1) // size * size  # each element is aligned to its own size
        offsets.append(pos)
        pos += size * c.repeat
        largest = max(largest, size)
    return offsets, (pos + largest - 1) // largest * largest


def decode_scans(data: bytes, chans: list[ScanChannel]) -> np.ndarray:
    """Decode whole scans to (n, len(chans)) raw integers (repeats: first element only)."""
    offsets, size = scan_layout(chans)
    n = len(data) // size
    rec = np.frombuffer(data[: n * size], np.uint8).reshape(n, size)
    out = np.empty((n, len(chans)), np.int64)
    for j, (c, off) in enumerate(zip(chans, offsets, strict=False)):
        nbytes = c.storage // 8
        dt = np.dtype(f"{'>' if c.big_endian else '<'}u{nbytes}")
        word = rec[:, off:off + nbytes].copy().view(dt).reshape(n).astype(np.uint64)
        word >>= np.uint64(c.shift)
        if c.bits < 64:
            word &= np.uint64((1 << c.bits) - 1)
        val = word.astype(np.int64)
        if c.signed and c.bits < 64:
            val = np.where(val >= (1 << (c.bits - 1)), val - (1 << c.bits), val)
        out[:, j] = val
    return out


class IioBufferedReader:
    """Reads scans from an IIO device's buffered character device (see module docs)."""

    live = True
    bad_lines = 0

    def __init__(self, uri: SensorUri, channels: int, sample_rate: float | None) -> None:
        self.root = Path(uri.path)
        self.dev = Path(uri.query.get("dev") or f"/dev/{self.root.name}")
        self.sample_rate = sample_rate
        wanted = uri.query.get("channels")
        self._wanted = [c.strip() for c in wanted.split(",") if c.strip()] if wanted else None
        self.length = uri.get_int("length", 128) or 128
        self.channels = channels
        self._fd: int | None = None
        self._chans: list[ScanChannel] = []
        self._data_cols: list[int] = []
        self._ts_col: int | None = None
        self._scale = np.ones(0)
        self._offset = np.zeros(0)
        self._scan_size = 1
        self._buf = b""

    def _write(self, rel: str, value: str) -> None:
        try:
            (self.root / rel).write_text(value)
        except OSError as exc:
            raise SourceError(f"cannot write {self.root / rel}: {exc.strerror or exc} (the "
                              "buffered IIO interface needs write access to sysfs)") from None

    def open(self) -> None:
        """Enable the channels and the buffer, then open the character device."""
        scan = self.root / "scan_elements"
        if not scan.is_dir():
            raise SourceError(f"IIO device {self.root} has no scan_elements (no buffer support)")
        found = sorted((p.name[3:-3] for p in scan.glob("in_*_en")), key=_natural)
        data_names = self._wanted or [n for n in found if n != "timestamp"]
        missing = [n for n in data_names if n not in found]
        if missing or len(data_names) != self.channels:
            raise SourceError(
                f"IIO device {self.root}: want {self.channels} channel(s), have "
                f"{', '.join(found) or 'none'} (missing: {missing or 'none'}; pick with "
                "?channels=a,b)")
        names = [*data_names, "timestamp"] if "timestamp" in found else list(data_names)
        self._write("buffer/enable", "0")
        for n in found:
            self._write(f"scan_elements/in_{n}_en", "1" if n in names else "0")
        chans = []
        for n in names:
            idx = int((scan / f"in_{n}_index").read_text().strip())
            chans.append(parse_scan_type(n, idx, (scan / f"in_{n}_type").read_text()))
        chans.sort(key=lambda c: c.index)
        self._chans = chans
        order = [c.name for c in chans]
        self._data_cols = [order.index(n) for n in data_names]
        self._ts_col = order.index("timestamp") if "timestamp" in order else None
        pairs = [_scale_offset(self.root, n) for n in data_names]
        self._scale = np.array([p[0] for p in pairs], np.float64)
        self._offset = np.array([p[1] for p in pairs], np.float64)
        self._scan_size = scan_layout(chans)[1]
        self._write("buffer/length", str(self.length))
        self._write("buffer/enable", "1")
        try:
            self._fd = os.open(self.dev, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.close()
            raise SourceError(f"cannot open {self.dev}: {exc.strerror or exc}") from None
        self._buf = b""

    def read_chunk(self, timeout: float) -> Chunk | None:
        """The whole scans that arrived within ``timeout``."""
        if self._fd is None:
            raise SourceError("IIO buffer is not open")
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        try:
            data = os.read(self._fd, self._scan_size * self.length)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise SourceError(f"IIO buffer {self.dev} failed: {exc.strerror or exc}") from None
        if not data:  # a FIFO without a writer (tests); a real device never ends
            self._closed_wait(timeout)
            return None
        self._buf += data
        n = len(self._buf) // self._scan_size
        if n == 0:
            return None
        whole, self._buf = self._buf[: n * self._scan_size], self._buf[n * self._scan_size:]
        raw = decode_scans(whole, self._chans)
        v = ((raw[:, self._data_cols] + self._offset) * self._scale).astype(np.float32)
        if self._ts_col is not None:
            t = raw[:, self._ts_col].astype(np.float64) / 1e9
        else:
            t = np.full(n, time.time())
        return Chunk(t, v)

    def _closed_wait(self, timeout: float) -> None:
        threading.Event().wait(min(timeout, 0.05))

    def rewind(self) -> None:
        """A device cannot be replayed."""

    def close(self) -> None:
        """Close the device and disable the buffer."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            with contextlib.suppress(OSError):
                (self.root / "buffer/enable").write_text("0")


def iio_reader(uri: SensorUri, cfg: SensorSourceConfig) -> IioSysfsReader | IioBufferedReader:
    """``iio:///sys/bus/iio/devices/iio:deviceN`` (``?buffered=1``: the character device)."""
    if uri.query.get("buffered", "0").lower() in {"1", "true", "yes"}:
        return IioBufferedReader(uri, cfg.channels, cfg.sample_rate)
    return IioSysfsReader(uri, cfg.channels, cfg.sample_rate)
