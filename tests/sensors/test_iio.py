"""IIO devices emulated with temporary sysfs-like folders (and a FIFO as the buffer device)."""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import SensorSourceConfig
from edge_agent.errors import SourceError
from edge_agent.sources.sensor import SensorSource
from edge_agent.sources.sensor_iio import decode_scans, parse_scan_type, scan_layout
from edge_agent.types import Frame


def cfg(uri: str, **kw: object) -> SensorSourceConfig:
    return SensorSourceConfig(type="sensor", uri=uri, **kw)


def collect(src: SensorSource, n: int) -> list[Frame]:
    frames: list[Frame] = []
    for _ in range(100):
        f = src.read(0.2)
        if f is not None:
            frames.append(f)
            if len(frames) == n:
                break
    return frames


@pytest.fixture
def adc(tmp_path: Path) -> Path:
    """An ADC with 3 voltage channels (shared scale, one own scale, a shared offset)."""
    dev = tmp_path / "iio:device0"
    dev.mkdir()
    files = {
        "name": "fake-adc",
        "in_voltage0_raw": "100",
        "in_voltage1_raw": "-20",
        "in_voltage10_raw": "7",
        "in_voltage_scale": "0.5",
        "in_voltage1_scale": "2.0",
        "in_voltage_offset": "10",
    }
    for name, text in files.items():
        (dev / name).write_text(text + "\n")
    return dev


def test_sysfs_polling_scale_and_offset(adc: Path) -> None:
    src = SensorSource(cfg(f"iio://{adc}?rate=200", window=2, channels=3))
    src.open()
    try:
        assert src.live
        (first,) = collect(src, 1)
        # (raw + offset) * scale; channels in natural order: voltage0, voltage1, voltage10
        np.testing.assert_allclose(first.data[0], [55.0, -20.0, 8.5])
        tmp = adc / "new_raw"
        tmp.write_text("-10\n")
        os.replace(tmp, adc / "in_voltage0_raw")  # atomic, as sysfs is
        for _ in range(50):  # a window read before the write may still be queued
            f = collect(src, 1)[0]
            if f.data[1, 0] == 0.0:
                break
        assert f.data[1, 0] == 0.0
    finally:
        src.close()


def test_sysfs_channel_selection_and_mismatch(adc: Path) -> None:
    src = SensorSource(cfg(f"iio://{adc}?channels=voltage10,voltage0&rate=100", window=1,
                           channels=2))
    src.open()
    try:
        (f,) = collect(src, 1)
        np.testing.assert_allclose(f.data[0], [8.5, 55.0])
    finally:
        src.close()
    wrong = SensorSource(cfg(f"iio://{adc}", channels=2))
    with pytest.raises(SourceError, match=r"has 3 channels \(voltage0, voltage1, voltage10\)"):
        wrong.open()
    wrong.close()
    missing = SensorSource(cfg(f"iio://{adc}?channels=accel_x", channels=1))
    with pytest.raises(SourceError, match="no channel"):
        missing.open()
    with pytest.raises(SourceError, match="not found"):
        SensorSource(cfg(f"iio://{adc}/nope")).open()


def test_scan_type_parsing_and_decoding() -> None:
    a = parse_scan_type("accel_x", 0, "le:s12/16>>4\n")
    b = parse_scan_type("accel_y", 1, "be:u10/16>>0")
    ts = parse_scan_type("timestamp", 2, "le:s64/64>>0")
    assert (a.signed, a.bits, a.storage, a.shift, a.big_endian) == (True, 12, 16, 4, False)
    offsets, size = scan_layout([a, b, ts])
    assert offsets == [0, 2, 8] and size == 16
    raw = struct.pack("<h", -5 << 4) + struct.pack(">H", 1023 | 0xFC00) + b"\0" * 4 + \
        struct.pack("<q", 123)
    np.testing.assert_array_equal(decode_scans(raw, [a, b, ts]), [[-5, 1023, 123]])
    with pytest.raises(SourceError, match="unknown scan type"):
        parse_scan_type("x", 0, "float32")


def test_buffered_character_device(tmp_path: Path) -> None:
    dev = tmp_path / "iio:device1"
    (dev / "scan_elements").mkdir(parents=True)
    (dev / "buffer").mkdir()
    for rel in ("buffer/enable", "buffer/length"):
        (dev / rel).write_text("0\n")
    chans = {"accel_x": (0, "le:s12/16>>4"), "accel_y": (1, "le:s12/16>>4"),
             "timestamp": (2, "le:s64/64>>0")}
    for name, (idx, typ) in chans.items():
        (dev / "scan_elements" / f"in_{name}_en").write_text("0\n")
        (dev / "scan_elements" / f"in_{name}_index").write_text(f"{idx}\n")
        (dev / "scan_elements" / f"in_{name}_type").write_text(typ + "\n")
    (dev / "in_accel_scale").write_text("0.25\n")
    fifo = tmp_path / "iio-dev1"
    os.mkfifo(fifo)
    src = SensorSource(cfg(f"iio://{dev}?buffered=1&dev={fifo}", window=2, channels=2))
    src.open()
    try:
        assert (dev / "buffer/enable").read_text() == "1"
        assert (dev / "scan_elements/in_accel_x_en").read_text() == "1"
        assert (dev / "scan_elements/in_timestamp_en").read_text() == "1"
        scans = b""
        for i, (x, y) in enumerate([(4, -8), (100, 0), (-2048, 2047)]):
            scans += struct.pack("<hh4xq", x << 4, y << 4, 1_000_000_000 + i * 10_000_000)
        writer_done = threading.Event()

        def write() -> None:
            fd = os.open(fifo, os.O_WRONLY)
            os.write(fd, scans[:10])  # a partial scan first
            os.write(fd, scans[10:])
            os.close(fd)
            writer_done.set()

        t = threading.Thread(target=write, name="fifo-writer")
        t.start()
        (f,) = collect(src, 1)
        t.join(5)
        assert writer_done.is_set()
        np.testing.assert_allclose(f.data, [[1.0, -2.0], [25.0, 0.0]])
        np.testing.assert_allclose(f.timestamps, [1.0, 1.01])
    finally:
        src.close()
    assert (dev / "buffer/enable").read_text() == "0"
