"""Energy and CPU time per result, where the board can say it.

Board power (watts), from an injectable sysfs root:

* Jetson, INA3221 power monitor: the ``ina3221`` hwmon driver (L4T 32.5 and later:
  ``/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in{N}_input`` mV, ``curr{N}_input`` mA,
  ``in{N}_label`` the rail) or the older ``ina3221x`` IIO driver
  (``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power{N}_input`` mW, ``rail_name_{N}``).
  The module's input rail (``VDD_IN``, ``POM_5V_IN``: a label ending in ``_IN``) is the whole
  module when present; otherwise the rails are summed.
* Raspberry Pi 5: the PMIC's ADCs, ``vcgencmd pmic_read_adc`` (no sysfs hwmon exposes them):
  the sum of current x voltage over the rails that report both. Only on the real root, at most
  every few seconds (it spawns a process).
* Elsewhere: no power; CPU seconds per result still are.

:class:`EnergyMeter` integrates power between samples (trapezoid) and takes the process's CPU
time (all threads, the interpreter's included), so over each interval it can say J and CPU
seconds per result.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_VCGENCMD_CACHE_S = 5.0
_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([0-9.eE+-]+)[AV]\s*$")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _pick(rails: dict[str, float]) -> float | None:
    """The module's input rail when one is named so, else the sum of the rails."""
    if not rails:
        return None
    inputs = [w for name, w in rails.items() if name.upper().endswith("_IN")]
    return inputs[0] if inputs else sum(rails.values())


def _glob(root: Path, pattern: str) -> list[Path]:
    try:
        return sorted(root.glob(pattern))
    except OSError:
        return []


def jetson_power(root: Path) -> float | None:
    """The Jetson module's power in watts from its INA3221 rails, or None."""
    rails: dict[str, float] = {}
    for hwmon in _glob(root, "sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*"):
        for volt_file in _glob(hwmon, "in*_input"):
            n = volt_file.name[2:-len("_input")]
            if not n.isdigit():
                continue
            mv = _number(_read(volt_file))
            ma = _number(_read(hwmon / f"curr{n}_input"))
            if mv is None or ma is None:
                continue  # shunt-voltage channels (in4..in7) have no current
            name = _read(hwmon / f"in{n}_label") or f"{hwmon.name}_in{n}"
            rails[name] = mv * ma / 1e6
    if not rails:
        for dev in _glob(root, "sys/bus/i2c/drivers/ina3221*/*/iio:device*"):
            for power_file in _glob(dev, "in_power*_input"):
                n = power_file.name[len("in_power"):-len("_input")]
                mw = _number(_read(power_file))
                if mw is None or not n.isdigit():
                    continue
                name = _read(dev / f"rail_name_{n}") or f"{dev.name}_{n}"
                rails[name] = mw / 1000.0
    return _pick(rails)


def parse_pmic_adc(text: str) -> float | None:
    """Watts from ``vcgencmd pmic_read_adc`` output: sum of I x V over rails with both."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        (amps if m.group(2) == "A" else volts)[m.group(1)] = value
    rails = {name: amps[name] * volts[name] for name in amps if name in volts}
    return sum(rails.values()) if rails else None


class PowerReader:
    """Board power in watts (None where the board cannot say), under ``root``."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root
        self.source: str | None = None  # "ina3221" or "pmic" once a reading came from it
        self._pmic_cache: tuple[float, float | None] = (-1e9, None)

    def read(self) -> float | None:
        watts = jetson_power(self.root)
        if watts is not None:
            self.source = "ina3221"
            return watts
        if self.root == Path("/"):
            watts = self._pmic()
            if watts is not None:
                self.source = "pmic"
                return watts
        return None

    def _pmic(self) -> float | None:
        at, cached = self._pmic_cache
        now = time.monotonic()
        if now - at < _VCGENCMD_CACHE_S:
            return cached
        watts = None
        exe = shutil.which("vcgencmd")
        if exe is not None:
            try:
                out = subprocess.run([exe, "pmic_read_adc"], capture_output=True, text=True,
                                     timeout=2.0, check=False)
                watts = parse_pmic_adc(out.stdout) if out.returncode == 0 else None
            except (OSError, subprocess.SubprocessError):
                watts = None
        self._pmic_cache = (now, watts)
        return watts


def process_cpu_seconds() -> float:
    """CPU time of this process, user and system, all threads."""
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class EnergyFigures:
    """Over the last interval: results, CPU and energy per result, mean board power."""

    results: int
    cpu_s_per_result: float | None
    power_w: float | None
    energy_j_per_result: float | None


class EnergyMeter:
    """Per-result CPU time and energy between successive :meth:`sample` calls (thread-safe).

    Args:
        reader: board power (None: CPU time only).
        cpu: the process CPU-seconds clock (tests hand in their own).
        clock: monotonic seconds.
    """

    def __init__(self, reader: PowerReader | None = None, *,
                 cpu: Callable[[], float] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.reader = reader
        self._cpu = cpu or process_cpu_seconds
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._last: tuple[float, float, int, float | None] | None = None  # t, cpu, n, watts
        self.figures = EnergyFigures(0, None, None, None)

    def sample(self, results_total: int) -> EnergyFigures:
        """Take a sample with the results counted so far; returns the last interval's figures."""
        with self._lock:
            now = self._clock()
            cpu = self._cpu()
            watts = self.reader.read() if self.reader is not None else None
            last, self._last = self._last, (now, cpu, results_total, watts)
            if last is None:
                self.figures = EnergyFigures(0, None, watts, None)
                return self.figures
            t0, cpu0, n0, watts0 = last
            n = results_total - n0
            if n < 0:  # a pipeline went away with its counts: start over
                self.figures = EnergyFigures(0, None, watts, None)
                return self.figures
            mean_w = None
            if watts is not None and watts0 is not None:
                mean_w = (watts + watts0) / 2.0  # trapezoid between the two samples
            per_cpu = (cpu - cpu0) / n if n else None
            per_j = mean_w * (now - t0) / n if n and mean_w is not None else None
            self.figures = EnergyFigures(n, per_cpu, watts, per_j)
            return self.figures
