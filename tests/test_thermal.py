"""Thermal-aware pacing against fake sysfs trees (Pi, Jetson, x86): readings, the governor's
levels with hysteresis, and a pipeline that thins a live source's frames as the board heats.

No assertion depends on timing: temperatures are driven as sequences and the outcome is a
sequence of frame-rate factors or an exact count of skipped frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import ThermalConfig, parse_config
from edge_agent.errors import ConfigError
from edge_agent.thermal import (
    FrameThinner,
    ThermalGovernor,
    ThermalMonitor,
    ThermalReader,
    ThermalReading,
)


def _zone(root: Path, n: int, kind: str, temp_c: float,
          trips: list[tuple[str, float]] = ()) -> Path:  # type: ignore[assignment]
    zone = root / f"sys/class/thermal/thermal_zone{n}"
    zone.mkdir(parents=True)
    (zone / "type").write_text(kind + "\n")
    (zone / "temp").write_text(f"{int(temp_c * 1000)}\n")
    for i, (trip_type, trip_c) in enumerate(trips):
        (zone / f"trip_point_{i}_type").write_text(trip_type + "\n")
        (zone / f"trip_point_{i}_temp").write_text(f"{int(trip_c * 1000)}\n")
    return zone


def _set_temp(zone: Path, temp_c: float) -> None:
    (zone / "temp").write_text(f"{int(temp_c * 1000)}\n")


def _pi_tree(root: Path, temp_c: float, throttled: str = "0x0") -> Path:
    zone = _zone(root, 0, "cpu-thermal", temp_c, [("critical", 110.0)])
    fw = root / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text(throttled + "\n")
    return zone


# ----------------------------------------------------------------------------- reading


def test_pi_reading_uses_the_firmware_limit_below_the_critical_trip(tmp_path: Path) -> None:
    _pi_tree(tmp_path, 64.5, "0x50001")
    reading = ThermalReader(tmp_path).read()
    assert reading.temp_c == 64.5
    assert reading.trip_c == 80.0  # the firmware throttles at 80 °C, not at the 110 °C trip
    assert reading.throttled == 0x50001
    assert not reading.throttling_now  # bit 0 (under-voltage) alone does not slow the ARM
    (tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled").write_text("0x4\n")
    assert ThermalReader(tmp_path).read().throttling_now


def test_jetson_reading_picks_the_cpu_zone_and_its_lowest_real_trip(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "AO-therm", 40.0, [("critical", 101.0)])
    _zone(tmp_path, 1, "CPU-therm", 58.0,
          [("active", 50.0), ("passive", 0.0), ("hot", 96.5), ("critical", 101.5)])
    _zone(tmp_path, 2, "GPU-therm", 61.0, [("passive", 90.0)])
    reading = ThermalReader(tmp_path).read()
    # the fan's active trip and the disabled (0) passive one are not limits
    assert (reading.temp_c, reading.trip_c, reading.throttled) == (58.0, 96.5, None)


def test_no_sensor_or_no_trip_never_slows_down(tmp_path: Path) -> None:
    assert ThermalReader(tmp_path).read() == ThermalReading(None, None, None)
    _zone(tmp_path, 0, "x86_pkg_temp", 95.0, [("passive", 0.0)])
    reading = ThermalReader(tmp_path).read()
    assert (reading.temp_c, reading.trip_c) == (95.0, None)
    gov = ThermalGovernor(ThermalConfig())
    assert gov.update(reading) == 1.0
    # a configured trip point covers boards whose zones name none
    assert ThermalGovernor(ThermalConfig(trip_c=96.0)).update(reading) == 0.25


# ----------------------------------------------------------------------------- governor


def _drive(gov: ThermalGovernor, temps: list[float], trip: float = 80.0) -> list[float]:
    return [gov.update(ThermalReading(t, trip, None)) for t in temps]


def test_rate_falls_towards_the_trip_and_recovers_with_hysteresis() -> None:
    gov = ThermalGovernor(ThermalConfig())  # trip 80: levels at 70, 72.67, 75.33; hyst. 3
    assert [round(t, 2) for t in gov.thresholds(80.0)] == [70.0, 72.67, 75.33]
    temps = [60, 69.9, 70, 71, 69, 70.5, 73, 76, 79, 74, 72, 69, 68, 66.9, 60]
    assert _drive(gov, temps) == [
        1.0, 1.0,  # cool
        0.75, 0.75, 0.75, 0.75,  # first level at 70; 69 is not yet 3 below it
        0.5, 0.25, 0.25,  # hotter: lower
        0.25,  # 74 is not 3 below 75.33: stays at the lowest rate
        0.5,  # 72 is: one level up
        0.75, 0.75,  # 69 is 3 below 72.67; 68 is not 3 below 70
        1.0, 1.0]  # 66.9 is: full rate again
    assert gov.changes == 6


def test_a_temperature_hovering_at_a_threshold_does_not_oscillate() -> None:
    gov = ThermalGovernor(ThermalConfig())
    temps = [69.5, 70.2, 69.0, 70.4, 68.1, 70.0, 69.9, 67.5, 70.1] * 5
    factors = _drive(gov, temps)
    assert factors[0] == 1.0 and set(factors[1:]) == {0.75}
    assert gov.changes == 1


def test_a_jump_past_every_threshold_engages_the_lowest_rate_at_once() -> None:
    gov = ThermalGovernor(ThermalConfig(steps=4, min_factor=0.2))
    assert _drive(gov, [50, 79, 50]) == [1.0, 0.2, 1.0]


def test_firmware_throttling_forces_the_lowest_rate_until_it_stops() -> None:
    gov = ThermalGovernor(ThermalConfig())
    seq = [ThermalReading(55.0, 80.0, 0x0), ThermalReading(55.0, 80.0, 0x20002),
           ThermalReading(55.0, 80.0, 0x20000), ThermalReading(None, None, None)]
    assert [gov.update(r) for r in seq] == [1.0, 0.25, 1.0, 1.0]


def test_config_errors_say_which_key() -> None:
    base = "pipelines: [{name: a, source: {type: synthetic}, model: {path: m.tflite}}]\n"
    with pytest.raises(ConfigError, match="guard_c"):
        parse_config(base + "thermal: {margin_c: 3, guard_c: 5}\n")
    with pytest.raises(ConfigError, match=r"thermal\.min_factor"):
        parse_config(base + "thermal: {min_factor: 0}\n")
    cfg = parse_config(base + "thermal: {trip_c: 75, hysteresis_c: 4}\n")
    assert (cfg.thermal.trip_c, cfg.thermal.hysteresis_c, cfg.thermal.enabled) == (75, 4, True)


# ----------------------------------------------------------------------------- applying


def test_thinner_keeps_exactly_the_factors_share_of_frames() -> None:
    thinner = FrameThinner()
    kept = [thinner.admit(0.25) for _ in range(12)]
    assert kept == [False, False, False, True] * 3 and thinner.skipped == 9
    assert all(thinner.admit(1.0) for _ in range(5)) and thinner.skipped == 9
    assert FrameThinner.pause(1.0, 0.2) == 0.0
    assert FrameThinner.pause(0.5, 0.2) == pytest.approx(0.2)  # half the rate: twice the cycle
    assert FrameThinner.pause(0.25, 0.2) == pytest.approx(0.6)


def test_monitor_reads_the_board_at_most_every_interval(tmp_path: Path) -> None:
    zone = _pi_tree(tmp_path, 60.0)
    mon = ThermalMonitor(ThermalConfig(interval_s=2.0), ThermalReader(tmp_path))
    assert mon.factor(now=100.0) == 1.0
    _set_temp(zone, 79.0)
    assert mon.factor(now=101.0) == 1.0  # not read again yet
    assert mon.factor(now=102.0) == 0.25
    status = mon.status()
    assert status == {"enabled": True, "temp_c": 79.0, "trip_c": 80.0, "throttled": 0,
                      "level": 3, "factor": 0.25, "changes": 1}
    off = ThermalMonitor(ThermalConfig(enabled=False), ThermalReader(tmp_path))
    assert off.factor(now=0.0) == 1.0


def _rig(source: Any, thermal: Any) -> Any:
    from tests.test_pipeline import Rig

    rig = Rig(lambda _cfg: source)
    rig.pipe._thermal = thermal
    return rig


def test_live_pipeline_thins_frames_while_hot_and_recovers(tmp_path: Path) -> None:
    from tests.fakes import FakeSource

    zone = _pi_tree(tmp_path, 60.0)
    temps = [60.0] * 10 + [79.0] * 10 + [60.0] * 10  # cool, near the trip, cool again

    def heat(i: int) -> None:
        _set_temp(zone, temps[i])

    source = FakeSource([1] * 30, live=True, before_frame=heat)
    mon = ThermalMonitor(ThermalConfig(interval_s=1e-6), ThermalReader(tmp_path))
    rig = _rig(source, mon.factor)
    rig.run_to_end()
    st = rig.pipe.status()
    # factor 0.25 for frames 10..19 keeps frames 13 and 17; every cool frame goes on
    assert st["thermal_skipped"] == 8
    assert st["frames"] == 22
    assert st["thermal_factor"] == 1.0 and mon.governor.changes == 2


def test_file_pipeline_loses_no_frame_while_hot() -> None:
    from tests.fakes import FakeSource

    source = FakeSource([1] * 6, live=False)
    rig = _rig(source, lambda: 0.5)
    rig.run_to_end()
    st = rig.pipe.status()
    assert (st["frames"], st["inferred"], st["thermal_skipped"]) == (6, 6, 0)
    assert st["thermal_factor"] == 0.5


def test_metrics_carry_level_trip_and_each_pipelines_factor(tmp_path: Path) -> None:
    from edge_agent.metrics import Metrics
    from tests.service.test_metrics import _parse

    zone = _pi_tree(tmp_path, 60.0)
    mon = ThermalMonitor(ThermalConfig(), ThermalReader(tmp_path))
    m = Metrics()
    mon.factor(now=0.0)
    m.set_thermal(mon.status())
    m.set_gauge("edge_agent_thermal_factor", 1.0, pipeline="door")
    s = _parse(m.render())
    assert (s["edge_agent_thermal_level"], s["edge_agent_thermal_trip_celsius"]) == (0, 80.0)
    assert s['edge_agent_thermal_factor{pipeline="door"}'] == 1.0
    _set_temp(zone, 76.0)
    mon.factor(now=10.0)
    m.set_thermal(mon.status())
    m.set_gauge("edge_agent_thermal_factor", mon.factor(now=10.0), pipeline="door")
    m.set_gauge("edge_agent_thermal_skipped_total", 4, pipeline="door")
    s = _parse(m.render())
    assert s["edge_agent_thermal_level"] == 3
    assert s['edge_agent_thermal_factor{pipeline="door"}'] == 0.25
    assert s['edge_agent_thermal_skipped_total{pipeline="door"}'] == 4
    m.set_thermal(None)  # pacing off: no board series
    assert "edge_agent_thermal_level" not in _parse(m.render())
