"""Thermal-aware pacing: lower the frame rate before the firmware throttles the SoC.

:class:`ThermalReader` reads what the board says (the CPU thermal zone's temperature and its
lowest passive/hot trip point: Pi ``cpu-thermal``, Jetson ``CPU-therm``, x86 ``x86_pkg_temp``;
the Pi firmware's throttled flags) from an injectable sysfs root. :class:`ThermalGovernor`
turns a sequence of readings into a frame-rate factor (1.0 = full rate) in discrete levels:
level ``k`` engages at ``start + k * step`` degrees and is left only once the temperature
falls ``hysteresis_c`` below that threshold, so a temperature hovering at a threshold never
makes the rate oscillate. The firmware's "throttled / capped / soft limit now" flags force the
lowest level: the firmware is already slowing the CPU. :class:`FrameThinner` applies a factor
to a pipeline's frames (live sources: keep a share of the frames; file sources: wait longer
between frames).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent import sysinfo
from edge_agent.config import ThermalConfig

logger = logging.getLogger(__name__)

# Pi firmware bits that mean "slowed down right now": frequency capped, throttled, soft limit
_THROTTLING_NOW = (1 << 1) | (1 << 2) | (1 << 3)
_TRIP_TYPES = ("passive", "hot", "critical")  # "active" trips start fans: not a limit
# The Pi firmware (3B+, 4, 5) starts throttling the ARM at 80 °C, below the kernel's only
# (critical) trip point of cpu-thermal: on a board with the firmware's get_throttled file the
# pacing works against 80 °C unless the zone names a lower limit
PI_FIRMWARE_THROTTLE_C = 80.0


@dataclass(frozen=True)
class ThermalReading:
    """One look at the board: CPU temperature and trip point (°C), Pi throttled bits."""

    temp_c: float | None
    trip_c: float | None
    throttled: int | None

    @property
    def throttling_now(self) -> bool:
        """The Pi firmware is slowing the CPU right now."""
        return bool(self.throttled is not None and self.throttled & _THROTTLING_NOW)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _millideg(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return int(raw) / 1000.0
    except ValueError:
        return None


def cpu_zone(root: Path) -> Path | None:
    """The CPU's thermal zone folder (by type: see ``sysinfo``), else the first readable one."""
    try:
        zones = sorted((root / "sys/class/thermal").glob("thermal_zone*"))
    except OSError:
        return None
    fallback: Path | None = None
    for zone in zones:
        if _millideg(_read(zone / "temp")) is None:
            continue
        kind = (_read(zone / "type") or "").lower()
        if any(hint in kind for hint in sysinfo.CPU_ZONE_HINTS):
            return zone
        if fallback is None:
            fallback = zone
    return fallback


def trip_point(zone: Path) -> float | None:
    """The lowest passive, hot or critical trip point of a zone (°C), positive ones only
    (Jetson and some x86 zones list disabled trips as 0 or negative)."""
    best: float | None = None
    try:
        types = sorted(zone.glob("trip_point_*_type"))
    except OSError:
        return None
    for type_file in types:
        kind = (_read(type_file) or "").lower()
        if kind not in _TRIP_TYPES:
            continue
        temp_file = type_file.with_name(type_file.name[: -len("type")] + "temp")
        celsius = _millideg(_read(temp_file))
        if celsius is None or celsius <= 0:
            continue
        best = celsius if best is None else min(best, celsius)
    return best


class ThermalReader:
    """Reads temperature, trip point and throttled flags under ``root`` (tests: a fake tree).

    The Pi's flags come from sysfs only (``vcgencmd`` would spawn a process every read).
    """

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def read(self) -> ThermalReading:
        zone = cpu_zone(self.root)
        temp = None if zone is None else _millideg(_read(zone / "temp"))
        trip = None if zone is None else trip_point(zone)
        bits = sysinfo.throttled(self.root, use_vcgencmd=False)
        if bits is not None:  # a Raspberry Pi: its firmware throttles before the kernel's trip
            trip = PI_FIRMWARE_THROTTLE_C if trip is None else min(trip, PI_FIRMWARE_THROTTLE_C)
        return ThermalReading(temp, trip, bits)


class ThermalGovernor:
    """Frame-rate factor from temperature readings, in levels with hysteresis.

    With trip point ``T`` (the zone's, or ``trip_c`` from the config), level ``k``
    (1..``steps``) engages at ``T - margin_c + (k - 1) * step`` where
    ``step = (margin_c - guard_c) / steps``; a level is released once the temperature is
    ``hysteresis_c`` below the threshold that engaged it. The factor at level ``k`` falls
    linearly from 1.0 (level 0) to ``min_factor`` (level ``steps``).
    """

    def __init__(self, cfg: ThermalConfig) -> None:
        self.cfg = cfg
        self.level = 0
        self.last: ThermalReading | None = None
        self.changes = 0

    def thresholds(self, trip_c: float) -> list[float]:
        """The temperatures at which levels 1..steps engage."""
        cfg = self.cfg
        start = trip_c - cfg.margin_c
        step = (cfg.margin_c - cfg.guard_c) / cfg.steps
        return [start + k * step for k in range(cfg.steps)]

    def factor_of(self, level: int) -> float:
        """The frame-rate factor at ``level``."""
        return round(1.0 - (1.0 - self.cfg.min_factor) * level / self.cfg.steps, 6)

    @property
    def factor(self) -> float:
        """The frame-rate factor now (1.0: full rate)."""
        return self.factor_of(self.level)

    def update(self, reading: ThermalReading) -> float:
        """Take a reading; returns the new factor."""
        self.last = reading
        trip = self.cfg.trip_c if self.cfg.trip_c is not None else reading.trip_c
        level = self.level
        if reading.throttling_now:
            level = self.cfg.steps
        elif reading.temp_c is None or trip is None:
            level = 0  # the board says nothing usable: never slow down blindly
        else:
            temp = reading.temp_c
            thresholds = self.thresholds(trip)
            while level < self.cfg.steps and temp >= thresholds[level]:
                level += 1  # engage every level the temperature has reached
            while level > 0 and temp <= thresholds[level - 1] - self.cfg.hysteresis_c:
                level -= 1  # release only well below the threshold that engaged it
        if level != self.level:
            self.changes += 1
            logger.info("thermal: %s °C (trip %s °C%s): frame rate x%.2f (level %d of %d)",
                        reading.temp_c, trip,
                        ", firmware throttling" if reading.throttling_now else "",
                        self.factor_of(level), level, self.cfg.steps)
        self.level = level
        return self.factor


class ThermalMonitor:
    """The process-wide governor, fed by a reader at most every ``interval_s`` (lazily, on
    the pipelines' capture threads; no thread of its own). Thread-safe."""

    def __init__(self, cfg: ThermalConfig, reader: ThermalReader | None = None) -> None:
        self.cfg = cfg
        self.reader = reader or ThermalReader()
        self.governor = ThermalGovernor(cfg)
        self._lock = threading.Lock()
        self._next = 0.0

    def factor(self, now: float | None = None) -> float:
        """The frame-rate factor now (re-reads the board when ``interval_s`` has passed)."""
        if not self.cfg.enabled:
            return 1.0
        now = time.monotonic() if now is None else now
        with self._lock:
            if now >= self._next:
                self._next = now + self.cfg.interval_s
                self.governor.update(self.reader.read())
            return self.governor.factor

    def status(self) -> dict[str, Any]:
        """Temperature, trip point, throttled flags, level and factor (status and stats)."""
        with self._lock:
            last = self.governor.last
            trip = self.cfg.trip_c if self.cfg.trip_c is not None else (
                None if last is None else last.trip_c)
            return {
                "enabled": self.cfg.enabled,
                "temp_c": None if last is None else last.temp_c,
                "trip_c": trip,
                "throttled": None if last is None else last.throttled,
                "level": self.governor.level,
                "factor": round(self.governor.factor, 3),
                "changes": self.governor.changes,
            }


class FrameThinner:
    """Applies a frame-rate factor to one pipeline's frames.

    Live sources: :meth:`admit` keeps ``factor`` of the frames (a credit per frame, so 0.5
    keeps every other frame, deterministically). File sources are never thinned (every frame
    counts); :meth:`pause` says how long to wait after a frame instead, so the pipeline's
    own rate falls to ``factor`` of what it was.
    """

    def __init__(self) -> None:
        self._credit = 0.0
        self.skipped = 0

    def admit(self, factor: float) -> bool:
        """Whether the next frame of a live source goes on (False: skip it)."""
        if factor >= 1.0:
            self._credit = 0.0
            return True
        self._credit += factor
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        self.skipped += 1
        return False

    @staticmethod
    def pause(factor: float, busy_s: float) -> float:
        """Seconds to wait after a frame that took ``busy_s`` (file sources)."""
        if factor >= 1.0 or busy_s <= 0:
            return 0.0
        return busy_s * (1.0 / max(factor, 1e-3) - 1.0)
