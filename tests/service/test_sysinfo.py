"""Board probes against a fake /sys tree."""

from __future__ import annotations

from pathlib import Path

from edge_agent import sysinfo


def _zone(root: Path, n: int, kind: str, milli: str) -> None:
    z = root / f"sys/class/thermal/thermal_zone{n}"
    z.mkdir(parents=True)
    (z / "type").write_text(kind + "\n")
    (z / "temp").write_text(milli + "\n")


def test_cpu_zone_preferred(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "AO-therm", "30000")
    _zone(tmp_path, 1, "CPU-therm", "51500")  # Jetson
    assert sysinfo.cpu_temperature(tmp_path) == 51.5


def test_first_zone_when_none_is_named_cpu(tmp_path: Path) -> None:
    _zone(tmp_path, 0, "acpitz", "40000")
    assert sysinfo.cpu_temperature(tmp_path) == 40.0


def test_no_thermal_zone(tmp_path: Path) -> None:
    assert sysinfo.cpu_temperature(tmp_path) is None


def test_throttled_from_sysfs(tmp_path: Path) -> None:
    fw = tmp_path / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("50005\n")
    bits = sysinfo.throttled(tmp_path, use_vcgencmd=False)
    assert bits == 0x50005
    assert sysinfo.describe_throttled(bits) == [
        "under-voltage now", "throttled now", "under-voltage has occurred",
        "throttling has occurred"]
    assert sysinfo.throttled(tmp_path / "x", use_vcgencmd=False) is None


def test_disk_space_of_a_missing_path_uses_its_parent(tmp_path: Path) -> None:
    space = sysinfo.disk_space(tmp_path / "not" / "yet")
    assert space is not None and space.total > 0 and 0 <= space.free_ratio <= 1


def test_clock_and_board_from_fake_root(tmp_path: Path) -> None:
    assert sysinfo.clock_synchronized(tmp_path) is None
    (tmp_path / "run/systemd/timesync").mkdir(parents=True)
    (tmp_path / "run/systemd/timesync/synchronized").touch()
    assert sysinfo.clock_synchronized(tmp_path) is True
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    assert sysinfo.board_model(tmp_path) == "Raspberry Pi 5 Model B Rev 1.0"
