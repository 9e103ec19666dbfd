"""Energy and CPU time per result: Jetson INA3221 rails (hwmon and the older IIO driver) on
fake sysfs trees, the Pi 5 PMIC's vcgencmd output, and the meter's per-interval arithmetic
with clocks the test drives (no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.energy import EnergyMeter, PowerReader, jetson_power, parse_pmic_adc

# a Pi 5's `vcgencmd pmic_read_adc` (abridged; EXT5V has a voltage but no current)
PMIC_OUTPUT = """\
 3V7_WL_SW_A current(0)=0.00390372A
   3V3_SYS_A current(1)=0.05000000A
 VDD_CORE_A current(7)=2.00000000A
 3V7_WL_SW_V volt(8)=3.71426400V
   3V3_SYS_V volt(9)=3.30000000V
 VDD_CORE_V volt(15)=0.80000000V
     EXT5V_V volt(24)=5.14600000V
      BATT_V volt(25)=0.00000000V
"""


def _hwmon(root: Path, rails: list[tuple[str, float, float]], driver: str = "ina3221") -> None:
    hw = root / f"sys/bus/i2c/drivers/{driver}/1-0040/hwmon/hwmon3"
    hw.mkdir(parents=True)
    for n, (label, mv, ma) in enumerate(rails, start=1):
        (hw / f"in{n}_label").write_text(label + "\n")
        (hw / f"in{n}_input").write_text(f"{int(mv)}\n")
        (hw / f"curr{n}_input").write_text(f"{int(ma)}\n")
    (hw / "in4_input").write_text("12\n")  # a shunt-voltage channel: no current, not a rail


def test_jetson_hwmon_uses_the_module_input_rail(tmp_path: Path) -> None:
    # Orin Nano: VDD_IN is the whole module; the other two are inside it
    _hwmon(tmp_path, [("VDD_IN", 5000, 1200), ("VDD_CPU_GPU_CV", 5000, 300),
                      ("VDD_SOC", 5000, 250)])
    assert jetson_power(tmp_path) == pytest.approx(6.0)
    assert PowerReader(tmp_path).read() == pytest.approx(6.0)


def test_jetson_rails_summed_without_an_input_rail(tmp_path: Path) -> None:
    _hwmon(tmp_path, [("CPU", 5000, 200), ("GPU", 5000, 100)])
    assert jetson_power(tmp_path) == pytest.approx(1.5)


def test_jetson_older_iio_driver(tmp_path: Path) -> None:
    dev = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    dev.mkdir(parents=True)
    for n, (name, mw) in enumerate([("POM_5V_IN", 3100), ("POM_5V_GPU", 400),
                                    ("POM_5V_CPU", 900)]):
        (dev / f"rail_name_{n}").write_text(name + "\n")
        (dev / f"in_power{n}_input").write_text(f"{mw}\n")
    reader = PowerReader(tmp_path)
    assert reader.read() == pytest.approx(3.1) and reader.source == "ina3221"


def test_no_power_sensor(tmp_path: Path) -> None:
    assert PowerReader(tmp_path).read() is None
    assert parse_pmic_adc("") is None
    assert parse_pmic_adc("error=1 error_msg=\"Command not registered\"\n") is None


def test_pi5_pmic_output_sums_current_times_voltage() -> None:
    expected = 0.00390372 * 3.714264 + 0.05 * 3.3 + 2.0 * 0.8
    assert parse_pmic_adc(PMIC_OUTPUT) == pytest.approx(expected)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Watts(PowerReader):
    def __init__(self, values: list[float | None]) -> None:
        super().__init__(Path("/nonexistent"))
        self.values = values

    def read(self) -> float | None:
        return self.values.pop(0)


def test_meter_gives_cpu_and_energy_per_result_over_each_interval() -> None:
    clock, cpu = _Clock(), _Clock()
    meter = EnergyMeter(_Watts([4.0, 6.0, 6.0, None]), cpu=cpu, clock=clock)
    first = meter.sample(0)
    assert (first.results, first.cpu_s_per_result, first.power_w) == (0, None, 4.0)
    clock.t, cpu.t = 10.0, 2.0
    fig = meter.sample(100)  # 100 results in 10 s at 4..6 W (mean 5): 50 J, 2 CPU s
    assert fig.results == 100
    assert fig.cpu_s_per_result == pytest.approx(0.02)
    assert fig.energy_j_per_result == pytest.approx(0.5)
    clock.t, cpu.t = 20.0, 2.5
    fig = meter.sample(100)  # nothing inferred: no per-result figure
    assert fig.cpu_s_per_result is None and fig.energy_j_per_result is None
    clock.t, cpu.t = 30.0, 3.5
    fig = meter.sample(150)  # the board stopped saying: CPU time only
    assert fig.cpu_s_per_result == pytest.approx(0.02) and fig.energy_j_per_result is None
    assert fig.power_w is None


def test_meter_without_a_board_reader_uses_the_process_cpu_clock() -> None:
    meter = EnergyMeter()
    meter.sample(0)
    sum(i * i for i in range(200_000))  # some CPU work of this process
    fig = meter.sample(4)
    assert fig.results == 4 and fig.cpu_s_per_result is not None
    assert fig.cpu_s_per_result >= 0.0 and fig.energy_j_per_result is None


def test_metrics_export_and_clear_the_figures() -> None:
    from edge_agent.metrics import Metrics
    from tests.service.test_metrics import _parse

    m = Metrics()
    m.set_energy(0.02, 0.5, 6.0)
    s = _parse(m.render())
    assert s["edge_agent_cpu_seconds_per_result"] == 0.02
    assert s["edge_agent_energy_joules_per_result"] == 0.5
    assert s["edge_agent_board_power_watts"] == 6.0
    m.set_energy(0.03, None, None)
    s = _parse(m.render())
    assert s["edge_agent_cpu_seconds_per_result"] == 0.03
    assert "edge_agent_energy_joules_per_result" not in s
    assert "edge_agent_board_power_watts" not in s
