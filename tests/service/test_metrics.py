"""The Prometheus registry, its text format, and a real scrape over HTTP."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge_agent.config import PrometheusConfig
from edge_agent.metrics import CONTENT_TYPE, STAGES, Metrics, MetricsServer, Registry

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def _parse(text: str) -> dict[str, float]:
    """Sample lines -> {"name{labels}": value}; checks every line is valid exposition text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_histogram_buckets_are_cumulative_with_le_inclusive() -> None:
    r = Registry()
    h = r.histogram("x_seconds", "help", ("pipeline",), buckets=(0.001, 0.01))
    for v in (0.0005, 0.001, 0.005, 0.5):
        h.labels("a").observe(v)
    s = _parse(r.render())
    assert s['x_seconds_bucket{pipeline="a",le="0.001"}'] == 2  # 0.001 <= le
    assert s['x_seconds_bucket{pipeline="a",le="0.01"}'] == 3
    assert s['x_seconds_bucket{pipeline="a",le="+Inf"}'] == 4
    assert s['x_seconds_count{pipeline="a"}'] == 4
    assert s['x_seconds_sum{pipeline="a"}'] == pytest.approx(0.5065)


def test_label_values_are_escaped() -> None:
    r = Registry()
    r.gauge("g", "help", ("name",)).labels('a"b\\c\nd').set(1)
    assert 'g{name="a\\"b\\\\c\\nd"} 1' in r.render()


def test_duplicate_metric_refused() -> None:
    r = Registry()
    r.counter("c_total", "help")
    with pytest.raises(ValueError, match="already registered"):
        r.gauge("c_total", "help")


def test_model_info_replaced_on_swap() -> None:
    m = Metrics()
    m.set_model("door", name="ssd", version=0, sha256="aa", delegate=None, backend="ai_edge_litert")
    m.set_model("door", name="ssd", version=7, sha256="bb", delegate="libedgetpu.so.1",
                backend="ai_edge_litert")
    s = _parse(m.render())
    info = [k for k in s if k.startswith("edge_agent_model_info")]
    assert info == ['edge_agent_model_info{pipeline="door",name="ssd",version="7",sha256="bb",'
                    'delegate="libedgetpu.so.1",backend="ai_edge_litert"}']


def test_set_gauge_by_name() -> None:
    m = Metrics()
    m.set_gauge("edge_agent_frames_dropped_total", 12, pipeline="door")
    m.set_gauge("edge_agent_outbox_depth", 3)
    s = _parse(m.render())
    assert s['edge_agent_frames_dropped_total{pipeline="door"}'] == 12
    assert s["edge_agent_outbox_depth"] == 3
    with pytest.raises(KeyError):
        m.set_gauge("edge_agent_stage_seconds", 1)


def test_board_values_from_a_fake_sysfs(tmp_path: Path) -> None:
    zone = tmp_path / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    fw = tmp_path / "sys/devices/platform/soc/soc:firmware"
    fw.mkdir(parents=True)
    (fw / "get_throttled").write_text("50005\n")
    s = _parse(Metrics(state_dir=tmp_path, sysfs_root=tmp_path).render())
    assert s["edge_agent_cpu_temperature_celsius"] == pytest.approx(48.312)
    assert s["edge_agent_throttled"] == 0x50005
    assert s["edge_agent_disk_free_bytes"] > 0
    assert s["edge_agent_up"] == 1


def test_board_values_absent_when_not_exposed(tmp_path: Path) -> None:
    s = _parse(Metrics(sysfs_root=tmp_path).render())
    assert "edge_agent_cpu_temperature_celsius" not in s
    assert "edge_agent_throttled" not in s


def test_scrape_finds_stage_histograms() -> None:
    m = Metrics()
    m.set_fps("door", 9.5)
    m.add_dropped("door", 2)
    m.set_outbox(4, 1)
    m.set_model("door", name="coco", version=0, sha256="e4b1", delegate=None, backend="litert")
    for stage in STAGES:
        for ms in (0.4, 3, 12, 80):
            m.observe_stage("door", stage, ms / 1000)
    server = m.serve(PrometheusConfig(bind="127.0.0.1", port=0))
    assert server is not None
    try:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            text = resp.read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
        assert err.value.code == 404
        err.value.close()
    finally:
        server.stop()
    server.stop()
    assert "# TYPE edge_agent_stage_seconds histogram" in text
    s = _parse(text)
    for stage in STAGES:
        assert s[f'edge_agent_stage_seconds_count{{pipeline="door",stage="{stage}"}}'] == 4
        le5ms = f'edge_agent_stage_seconds_bucket{{pipeline="door",stage="{stage}",le="0.005"}}'
        assert s[le5ms] == 2
    assert s['edge_agent_fps{pipeline="door"}'] == 9.5
    assert s['edge_agent_frames_dropped_total{pipeline="door"}'] == 2
    assert s["edge_agent_outbox_depth"] == 4
    assert s["edge_agent_outbox_dropped_total"] == 1
    assert s["edge_agent_up"] == 1


def test_disabled_endpoint_is_not_served() -> None:
    assert Metrics().serve(PrometheusConfig(enabled=False)) is None


def test_occupied_port_fails_at_bind() -> None:
    first = MetricsServer(Metrics(), "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            MetricsServer(Metrics(), "127.0.0.1", first.port)
    finally:
        first.stop()
