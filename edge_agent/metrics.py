"""The agent's Prometheus metrics, with cheap calls for the pipelines and a /metrics endpoint.

The agent builds one :class:`Metrics`, hands ``observe_stage`` to its pipelines, and serves it::

    metrics = Metrics(state_dir=config.state_dir)
    server = metrics.serve(config.metrics.prometheus)   # None when disabled
    ...
    metrics.observe_stage("door", "invoke", 0.0118)     # about a microsecond
    ...
    server.stop()

The registry, the text format and the HTTP server are in :mod:`edge_agent.prometheus`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import sysinfo
from edge_agent.config import PrometheusConfig
from edge_agent.prometheus import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Counter,
    Gauge,
    HistogramChild,
    PrometheusServer,
    Registry,
)

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "STAGES", "Metrics", "MetricsServer", "Registry"]

STAGES = ("capture", "preprocess", "invoke", "decode", "policy", "publish")


class Metrics:
    """The agent's metrics, with cheap calls for the pipelines and a scrape-time board probe.

    Args:
        state_dir: its file system's free space is exported (None: not exported).
        sysfs_root: where to read temperature and throttling (tests use a fake tree).
    """

    def __init__(self, state_dir: Path | None = None, sysfs_root: Path = Path("/")) -> None:
        self.registry = r = Registry()
        self.stage_seconds = r.histogram(
            "edge_agent_stage_seconds", "Time spent per frame in each pipeline stage, seconds.",
            ("pipeline", "stage"))
        self.fps = r.gauge("edge_agent_fps", "Frames processed per second.", ("pipeline",))
        self.frames = r.counter("edge_agent_frames_total", "Frames processed.", ("pipeline",))
        self.frames_dropped = r.counter(
            "edge_agent_frames_dropped_total",
            "Frames dropped because the pipeline was busy (newest frame wins).", ("pipeline",))
        self.errors = r.counter("edge_agent_errors_total", "Errors caught at a stage's loop.",
                                ("pipeline", "stage"))
        self.outbox_depth = r.gauge("edge_agent_outbox_depth",
                                    "Durable messages waiting for the broker's PUBACK.")
        self.outbox_dropped = r.counter(
            "edge_agent_outbox_dropped_total", "Messages dropped because the outbox was full.")
        self.model_info = r.gauge(
            "edge_agent_model_info", "The model each pipeline runs (value is always 1).",
            ("pipeline", "name", "version", "sha256", "delegate", "backend"))
        self.target_active = r.gauge(
            "edge_agent_target_active",
            "1 for the execution target serving a pipeline now, 0 for its other targets.",
            ("pipeline", "target", "state"))
        self.target_changes = r.counter(
            "edge_agent_target_changes_total",
            "Times a pipeline moved to another execution target (failover or return).",
            ("pipeline",))
        self.cpu_temperature = r.gauge("edge_agent_cpu_temperature_celsius",
                                       "CPU temperature (absent when the board has no sensor).")
        self.throttled = r.gauge(
            "edge_agent_throttled",
            "Raspberry Pi firmware throttling bitmask, 0 = fine (absent on other boards).")
        self.thermal_factor = r.gauge(
            "edge_agent_thermal_factor",
            "Thermal pacing: share of the full frame rate a pipeline runs at (1 = not slowed).",
            ("pipeline",))
        self.thermal_skipped = r.counter(
            "edge_agent_thermal_skipped_total",
            "Live-source frames skipped by thermal pacing.", ("pipeline",))
        self.thermal_level = r.gauge(
            "edge_agent_thermal_level",
            "Thermal pacing level, 0 = full rate (absent while thermal pacing is off).")
        self.thermal_trip = r.gauge(
            "edge_agent_thermal_trip_celsius",
            "The CPU zone's trip point thermal pacing works against (absent when unknown).")
        self.cpu_per_result = r.gauge(
            "edge_agent_cpu_seconds_per_result",
            "Process CPU seconds (all threads) per result over the last stats interval.")
        self.energy_per_result = r.gauge(
            "edge_agent_energy_joules_per_result",
            "Board energy per result over the last stats interval (absent where the board "
            "cannot measure power: Jetson INA3221 and Pi 5 PMIC only).")
        self.board_power = r.gauge("edge_agent_board_power_watts",
                                   "Board power (Jetson INA3221 input rail, Pi 5 PMIC rails).")
        self.disk_free = r.gauge("edge_agent_disk_free_bytes", "Free bytes under state_dir.")
        self.up = r.gauge("edge_agent_up", "1 while the agent runs.")
        self.up.set(1)
        self._model_keys: dict[str, tuple[str, ...]] = {}
        self._target_keys: dict[str, list[tuple[str, str, str]]] = {}
        self._stage_children: dict[tuple[str, str], HistogramChild] = {}
        self._state_dir = state_dir
        self._root = sysfs_root
        r.add_collector(self._collect_board)

    # ----------------------------------------------------------------- called by pipelines
    def observe_stage(self, pipeline: str, stage: str, seconds: float) -> None:
        """Record one stage's duration for one frame (cheap: call it on every frame)."""
        child = self._stage_children.get((pipeline, stage))
        if child is None:
            child = self.stage_seconds.labels(pipeline, stage)
            self._stage_children[(pipeline, stage)] = child
        child.observe(seconds)

    def frame_done(self, pipeline: str) -> None:
        """Count one processed frame."""
        self.frames.labels(pipeline).inc()

    def set_fps(self, pipeline: str, fps: float) -> None:
        """Set a pipeline's current frame rate."""
        self.fps.labels(pipeline).set(fps)

    def add_dropped(self, pipeline: str, count: int = 1) -> None:
        """Count frames a pipeline dropped."""
        if count:
            self.frames_dropped.labels(pipeline).inc(count)

    def add_error(self, pipeline: str, stage: str) -> None:
        """Count an error caught at a stage's loop boundary."""
        self.errors.labels(pipeline, stage).inc()

    # ----------------------------------------------------------------- called by the agent
    def set_outbox(self, depth: int, dropped_total: int) -> None:
        """Copy the transport's outbox numbers (``MqttTransport.stats()``)."""
        self.outbox_depth.set(depth)
        self.outbox_dropped.labels().set(dropped_total)

    def set_model(self, pipeline: str, *, name: str, version: str | int, sha256: str,
                  delegate: str | None, backend: str) -> None:
        """Export the model a pipeline runs now (replaces its previous model's series)."""
        key = (pipeline, name, str(version), sha256, delegate or "cpu", backend)
        old = self._model_keys.get(pipeline)
        if old is not None and old != key:
            self.model_info.remove(*old)
        self._model_keys[pipeline] = key
        self.model_info.labels(*key).set(1)

    def set_model_info(self, pipeline: str, ref: Any, info: Any) -> None:
        """:meth:`set_model` from a ``ModelRef`` and a ``RuntimeInfo``."""
        self.set_model(pipeline, name=ref.name, version=ref.version, sha256=ref.sha256,
                       delegate=info.delegate, backend=info.backend)

    def set_gauge(self, name: str, value: float, **labels: str) -> None:
        """Set any registered gauge, or a counter mirrored from a running total, by name.

        For values whose owner keeps the count (pipeline stats, transport stats): e.g.
        ``set_gauge("edge_agent_frames_dropped_total", 12, pipeline="door")``.
        """
        metric = self.registry.get(name)
        if not isinstance(metric, (Gauge, Counter)):
            raise KeyError(f"{name} is not a registered gauge or counter")
        metric.labels(*(labels[n] for n in metric.labelnames)).set(value)

    def set_targets(self, pipeline: str, states: dict[str, str], changes: int) -> None:
        """Export a pipeline's execution targets (name -> state) and its change count."""
        old = self._target_keys.get(pipeline, [])
        keys = [(pipeline, name, state) for name, state in states.items()]
        for key in old:
            if key not in keys:
                self.target_active.remove(*key)
        for key in keys:
            self.target_active.labels(*key).set(1 if key[2] == "active" else 0)
        self._target_keys[pipeline] = keys
        self.target_changes.labels(pipeline).set(changes)

    def remove_pipeline(self, pipeline: str) -> None:
        """Forget a pipeline's model series (after a reload removed it)."""
        old = self._model_keys.pop(pipeline, None)
        if old is not None:
            self.model_info.remove(*old)
        self.fps.remove(pipeline)
        self.thermal_factor.remove(pipeline)
        self.thermal_skipped.remove(pipeline)
        for key in self._target_keys.pop(pipeline, []):
            self.target_active.remove(*key)

    def set_thermal(self, status: dict[str, Any] | None) -> None:
        """Copy :meth:`edge_agent.thermal.ThermalMonitor.status` (None: pacing is off)."""
        if status is None or not status.get("enabled"):
            self.thermal_level.clear()
            self.thermal_trip.clear()
            return
        self.thermal_level.set(status["level"])
        if status.get("trip_c") is None:
            self.thermal_trip.clear()
        else:
            self.thermal_trip.set(status["trip_c"])

    def set_energy(self, cpu_s: float | None, joules: float | None,
                   watts: float | None) -> None:
        """Per-result CPU and energy and board power (None: absent)."""
        for gauge, value in ((self.cpu_per_result, cpu_s), (self.energy_per_result, joules),
                             (self.board_power, watts)):
            if value is None:
                gauge.clear()
            else:
                gauge.set(value)

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run ``collect()`` before every scrape, e.g. to copy ``transport.stats()``."""
        self.registry.add_collector(collect)

    def render(self) -> str:
        """The exposition text (what GET /metrics returns)."""
        return self.registry.render()

    def serve(self, config: PrometheusConfig) -> MetricsServer | None:
        """Start the HTTP endpoint when enabled; the caller stops it."""
        if not config.enabled:
            return None
        server = MetricsServer(self, config.bind, config.port, config.max_connections)
        server.start()
        return server

    def _collect_board(self) -> None:
        temp = sysinfo.cpu_temperature(self._root)
        if temp is None:
            self.cpu_temperature.clear()
        else:
            self.cpu_temperature.set(temp)
        bits = sysinfo.throttled(self._root, use_vcgencmd=self._root == Path("/"))
        if bits is None:
            self.throttled.clear()
        else:
            self.throttled.set(bits)
        if self._state_dir is not None:
            space = sysinfo.disk_space(self._state_dir)
            if space is not None:
                self.disk_free.set(space.free)


class MetricsServer(PrometheusServer):
    """The /metrics endpoint of a :class:`Metrics` (bound at construction, served on start)."""

    def __init__(self, metrics: Metrics, bind: str = "127.0.0.1", port: int = 9108,
                 max_connections: int = 16) -> None:
        """Bind ``bind:port`` (0: a free port; see ``.port``) for ``metrics``."""
        super().__init__(metrics.render, bind, port, max_connections)
