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


def test_v4l2_modes_of_a_non_camera_is_none(tmp_path: Path) -> None:
    assert sysinfo.v4l2_modes(Path("/dev/null")) is None  # ENOTTY: not V4L2
    assert sysinfo.v4l2_modes(tmp_path / "video9") is None  # missing


def test_describe_modes() -> None:
    modes = [sysinfo.VideoMode("MJPG", ((1920, 1080), (1280, 720))), sysinfo.VideoMode("YUYV", ())]
    assert sysinfo.describe_modes(modes) == "MJPG 1920x1080 1280x720; YUYV any size"


def test_video_and_usb_listing(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    for name in ("video10", "video2", "video-codec"):
        (tmp_path / "dev" / name).write_bytes(b"")
    assert [d.path.name for d in sysinfo.video_devices(tmp_path)] == ["video2", "video10"]
    dev = tmp_path / "sys/bus/usb/devices/1-1"
    dev.mkdir(parents=True)
    (dev / "idVendor").write_text("1A6E\n")
    (dev / "idProduct").write_text("089a\n")
    assert sysinfo.usb_ids(tmp_path) == {("1a6e", "089a")}
