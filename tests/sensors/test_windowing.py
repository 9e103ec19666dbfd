"""SensorSource on files and the generator: windows, hop, channels, timestamps, bad lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.config import NormalizeConfig, SensorSourceConfig, make_config
from edge_agent.errors import SourceError
from edge_agent.sources.sensor import SensorSource, Windower
from edge_agent.sources.sensor_base import Chunk, parse_sensor_uri
from edge_agent.types import Frame


def cfg(uri: str, **kw: object) -> SensorSourceConfig:
    return SensorSourceConfig(type="sensor", uri=uri, **kw)


def read_all(src: SensorSource, limit: int = 10_000) -> list[Frame]:
    frames: list[Frame] = []
    src.open()
    try:
        while len(frames) < limit:
            f = src.read(1.0)
            if f is not None:
                frames.append(f)
    except EOFError:
        pass
    finally:
        src.close()
    return frames


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_windows_hop_channels_and_time_column(tmp_path: Path) -> None:
    rows = ["t,ax,ay"] + [f"{i * 0.01:.2f},{i},{-i}" for i in range(10)]
    src = SensorSource(cfg(str(write_csv(tmp_path / "a.csv", rows)), window=4, hop=2,
                           channels=2))
    frames = read_all(src)
    assert [f.index for f in frames] == [0, 1, 2, 3]  # starts 0, 2, 4, 6 (8+4 > 10)
    for k, f in enumerate(frames):
        assert f.data.dtype == np.float32 and f.data.shape == (4, 2)
        expect = np.arange(2 * k, 2 * k + 4, dtype=np.float32)
        np.testing.assert_array_equal(f.data[:, 0], expect)
        np.testing.assert_array_equal(f.data[:, 1], -expect)
        np.testing.assert_allclose(f.timestamps, expect * 0.01)
        assert f.width == 4 and f.height == 2
    assert src.bad_lines == 0 and src.live is False


def test_bad_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    rows = ["a,b", "1,2", "oops", "3", "4,5,6", "nan,1", "", "# comment", "7,8",
            '{"v": [9, 10]}', '{"v": [1]}', "{broken", "11;12", "13,14"]
    src = SensorSource(cfg(str(write_csv(tmp_path / "b.csv", rows)), window=1, channels=2))
    frames = read_all(src)
    assert [f.data.tolist() for f in frames] == [[[1, 2]], [[7, 8]], [[9, 10]], [[13, 14]]]
    # oops, "3", "4,5,6", "nan,1", '{"v":[1]}', "{broken", "11;12"; the header is not bad
    assert src.bad_lines == 7
    assert frames[0].timestamps is None  # no time column, no sample rate


def test_separator_and_sample_rate_timestamps(tmp_path: Path) -> None:
    rows = ["1;2", "3;4", "5;6"]
    src = SensorSource(cfg(str(write_csv(tmp_path / "c.txt", rows)), window=3, channels=2,
                           separator=";", sample_rate=100))
    (f,) = read_all(src)
    np.testing.assert_allclose(f.timestamps, [0.0, 0.01, 0.02])


def test_hop_larger_than_window_skips_samples(tmp_path: Path) -> None:
    rows = [str(i) for i in range(12)]
    src = SensorSource(cfg(str(write_csv(tmp_path / "d.csv", rows)), window=2, hop=5))
    assert [f.data[:, 0].tolist() for f in read_all(src)] == [[0, 1], [5, 6], [10, 11]]


def test_windower_across_chunk_borders() -> None:
    w = Windower(window=3, hop=4, channels=1)
    out = []
    for start in range(0, 20, 2):  # chunks of 2 samples
        v = np.arange(start, start + 2, dtype=np.float32)[:, None]
        w.push(Chunk(v[:, 0].astype(np.float64), v))
        while (x := w.pop()) is not None:
            out.append(x[1][:, 0].tolist())
    assert out == [[0, 1, 2], [4, 5, 6], [8, 9, 10], [12, 13, 14], [16, 17, 18]]


def test_jsonl_file_with_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({"t": 100 + i * 0.5, "v": [i, 2 * i]}) + "\n"
                            for i in range(6)))
    frames = read_all(SensorSource(cfg(str(path), window=3, channels=2)))
    assert len(frames) == 2
    np.testing.assert_allclose(frames[1].timestamps, [101.5, 102.0, 102.5])
    np.testing.assert_array_equal(frames[1].data[:, 1], [6, 8, 10])


def test_realtime_replay_paces_by_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    times = [10.0, 10.4, 10.45, 10.5]
    path.write_text("".join(json.dumps({"t": t, "v": i}) + "\n" for i, t in enumerate(times)))
    src = SensorSource(cfg(str(path), window=1, realtime=True))
    src.open()
    try:
        first = src.read(1.0)
        assert first is not None and first.data[0, 0] == 0
        # the next sample is due 400 ms later: a zero timeout finds nothing yet
        assert src.read(0.0) is None
        got = [src.read(1.0) for _ in range(3)]
        assert [g.data[0, 0] for g in got if g is not None] == [1, 2, 3]
        with pytest.raises(EOFError):
            src.read(1.0)
    finally:
        src.close()


def test_loop_replays_and_counts_bad_lines_over_passes(tmp_path: Path) -> None:
    rows = ["x", "1", "bad", "2", "3"]
    src = SensorSource(cfg(str(write_csv(tmp_path / "g.csv", rows)), window=2, loop=True))
    frames = read_all(src, limit=4)
    # every pass starts a new window: [1,2] then [3] is dropped at the end of the pass
    assert [f.data[:, 0].tolist() for f in frames] == [[1, 2], [1, 2], [1, 2], [1, 2]]
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert src.bad_lines == 4


def test_loop_of_a_file_without_windows_ends(tmp_path: Path) -> None:
    src = SensorSource(cfg(str(write_csv(tmp_path / "h.csv", ["1"])), window=5, loop=True))
    assert read_all(src) == []


def test_normalize_meanstd_and_minmax(tmp_path: Path) -> None:
    rows = ["2,10", "4,30"]
    path = str(write_csv(tmp_path / "n.csv", rows))
    ms = NormalizeConfig(mode="meanstd", mean=(3, 20), std=(1, 10))
    (f,) = read_all(SensorSource(cfg(path, window=2, channels=2, normalize=ms)))
    np.testing.assert_allclose(f.data, [[-1, -1], [1, 1]])
    mm = NormalizeConfig(mode="minmax", min=(0,), max=(40,))
    (f,) = read_all(SensorSource(cfg(path, window=2, channels=2, normalize=mm)))
    np.testing.assert_allclose(f.data, [[0.05, 0.25], [0.1, 0.75]])


def test_normalize_with_wrong_count_is_a_config_error() -> None:
    bad = NormalizeConfig(mode="meanstd", mean=(1, 2), std=(1, 1))
    with pytest.raises(ValidationError, match=r"normalize.mean has 2 value\(s\) for 3 channel"):
        cfg("synthetic:sine", channels=3, normalize=bad)  # the config model refuses it


def test_synthetic_is_seeded_and_finite() -> None:
    uri = "synthetic:sine?freq=2&noise=0.1&seed=7&samples=250&rate=100&anomaly_every=100"
    a = read_all(SensorSource(cfg(uri, window=50, channels=3)))
    b = read_all(SensorSource(cfg(uri, window=50, channels=3)))
    assert len(a) == 5
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.data, y.data)
    # the injected anomaly (5 samples at the end of every 100, +5 amplitude) stands out
    peak = int(np.argmax(a[1].data[:, 0]))
    assert 45 <= peak <= 49 and a[1].data[peak, 0] > 3.5
    clean = read_all(SensorSource(cfg("synthetic:sine?freq=1&samples=100&rate=100",
                                      window=100)))
    t = np.arange(100) / 100
    np.testing.assert_allclose(clean[0].data[:, 0], np.sin(2 * np.pi * t), atol=1e-6)


def test_ramp_generator_gives_x_values() -> None:
    (f,) = read_all(SensorSource(cfg("synthetic:ramp?start=0&stop=0.3&step=0.1&samples=6",
                                     window=6)))
    np.testing.assert_allclose(f.data[:, 0], [0, 0.1, 0.2, 0.3, 0, 0.1], atol=1e-6)


def test_fps_paces_windows() -> None:
    src = SensorSource(cfg("synthetic:sine?samples=10", window=1, fps=4))
    src.open()
    try:
        assert src.read(1.0) is not None
        assert src.read(0.0) is None  # the next window is due 250 ms later
        assert src.read(1.0) is not None
    finally:
        src.close()


def test_missing_file_and_unknown_scheme() -> None:
    src = SensorSource(cfg("/nonexistent/x.csv"))
    with pytest.raises(SourceError, match="cannot open sensor file"):
        src.open()
    src.close()
    with pytest.raises(ValidationError, match="unknown sensor scheme 'ftp'"):
        cfg("ftp://host/x")  # the config model refuses it
    with pytest.raises(SourceError, match="not open"):
        SensorSource(cfg("synthetic:sine")).read(0.1)


def test_uri_parsing() -> None:
    u = parse_sensor_uri("serial:///dev/ttyUSB0?baud=9600")
    assert (u.scheme, u.path, u.query) == ("serial", "/dev/ttyUSB0", {"baud": "9600"})
    u = parse_sensor_uri("iio:///sys/bus/iio/devices/iio:device0?channels=a,b")
    assert u.path == "/sys/bus/iio/devices/iio:device0" and u.query["channels"] == "a,b"
    assert parse_sensor_uri("synthetic:sine?freq=2").path == "sine"
    assert parse_sensor_uri("/data/x.csv").scheme == "file"
    assert parse_sensor_uri("data/x:y.csv").scheme == "file"
    assert parse_sensor_uri("stdin:").scheme == "stdin"
    assert parse_sensor_uri("alsa:default").path == "default"
    assert parse_sensor_uri("unix:///run/x.sock").path == "/run/x.sock"


def test_config_example_from_sensors_md_parses() -> None:
    config = make_config(pipelines=[{
        "name": "vibration",
        "source": {"type": "sensor", "uri": "serial:///dev/ttyUSB0", "window": 128, "hop": 64,
                   "channels": 3, "baudrate": 115200,
                   "normalize": {"mode": "meanstd", "mean": [0, 0, 9.81], "std": [1, 1, 1]}},
        "model": {"path": "m.tflite", "decoder": "threshold",
                  "decoder_options": {"index": 0, "level": 0.8, "hysteresis": 0.1}},
    }])
    src = config.pipelines[0].source
    assert isinstance(src, SensorSourceConfig)
    SensorSource(src)  # constructs without opening the port
