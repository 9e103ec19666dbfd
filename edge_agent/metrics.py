"""Prometheus metrics: a tiny registry, the text exposition format 0.0.4, and a /metrics server.

No dependency: the handful of metric types the agent needs fit in this module, and the hot path
(:meth:`Metrics.observe_stage`, called for every stage of every frame) stays a dict lookup, a
bisect and a locked add, about a microsecond.

The agent builds one :class:`Metrics`, hands it to its pipelines, and serves it::

    metrics = Metrics(state_dir=config.state_dir)
    server = metrics.serve(config.metrics.prometheus)   # None when disabled
    ...
    metrics.observe_stage("door", "invoke", 0.0118)
    ...
    server.stop()
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge_agent import sysinfo
from edge_agent.config import PrometheusConfig

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STAGES = ("capture", "preprocess", "invoke", "decode", "policy", "publish")
# seconds; fine steps where edge inference lives (0.5 ms .. 250 ms), coarse beyond
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
                   0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _new_child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        """The child for these label values (created on first use)."""
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
            with self._lock:
                child = self._children.setdefault(key, self._new_child())
        return child

    def remove(self, *values: str) -> None:
        """Forget one label set (a pipeline that went away)."""
        with self._lock:
            self._children.pop(tuple(str(v) for v in values), None)

    def clear(self) -> None:
        """Forget every label set."""
        with self._lock:
            self._children.clear()

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help.replace(chr(92), chr(92) * 2)}"
        yield f"# TYPE {self.name} {self.kind}"
        with self._lock:
            items = list(self._children.items())
        for key, child in items:
            yield from self._render_child(key, child)

    def _render_child(self, key: tuple[str, ...], child: Any) -> Iterable[str]:
        yield f"{self.name}{_labels(self.labelnames, key)} {_fmt(child.value)}"


class _Value:
    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class Counter(_Metric):
    """A monotonically rising count (name ends in ``_total``)."""

    kind = "counter"

    def _new_child(self) -> _Value:
        return _Value()

    def inc(self, amount: float = 1.0) -> None:
        """Add to the unlabelled counter."""
        self.labels().inc(amount)


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def _new_child(self) -> _Value:
        return _Value()

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self.labels().set(value)


class _HistogramChild:
    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); last is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect_left(self._bounds, value)  # first bound >= value: Prometheus' "le"
        with self._lock:
            self.counts[i] += 1
            self.sum += value

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self.counts), self.sum


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        """Observe into the unlabelled histogram."""
        self.labels().observe(value)

    def _render_child(self, key: tuple[str, ...], child: _HistogramChild) -> Iterable[str]:
        counts, total = child.snapshot()
        running = 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            running += n
            le = 'le="' + _fmt(bound) + '"'
            yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}"
        yield f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(total)}"
        yield f"{self.name}_count{_labels(self.labelnames, key)} {running}"


class Registry:
    """Metrics by name, plus collectors that refresh values just before each scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> Any:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register a counter."""
        return self._add(Counter(name, help_, labelnames))  # type: ignore[no-any-return]

    def gauge(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register a gauge."""
        return self._add(Gauge(name, help_, labelnames))  # type: ignore[no-any-return]

    def histogram(self, name: str, help_: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        """Register a histogram."""
        return self._add(Histogram(name, help_, labelnames, buckets))  # type: ignore[no-any-return]

    def get(self, name: str) -> _Metric | None:
        """The metric registered as ``name``."""
        return self._metrics.get(name)

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Call ``collect()`` before every scrape (to copy values that are cheap to read then)."""
        with self._lock:
            self._collectors.append(collect)

    def render(self) -> str:
        """The whole registry in the Prometheus text format 0.0.4."""
        with self._lock:
            collectors = list(self._collectors)
            metrics = list(self._metrics.values())
        for collect in collectors:
            try:
                collect()
            except Exception:
                logger.exception("metrics collector %r failed", collect)
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


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
        self.cpu_temperature = r.gauge("edge_agent_cpu_temperature_celsius",
                                       "CPU temperature (absent when the board has no sensor).")
        self.throttled = r.gauge(
            "edge_agent_throttled",
            "Raspberry Pi firmware throttling bitmask, 0 = fine (absent on other boards).")
        self.disk_free = r.gauge("edge_agent_disk_free_bytes", "Free bytes under state_dir.")
        self.up = r.gauge("edge_agent_up", "1 while the agent runs.")
        self.up.set(1)
        self._model_keys: dict[str, tuple[str, ...]] = {}
        self._stage_children: dict[tuple[str, str], _HistogramChild] = {}
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

    def remove_pipeline(self, pipeline: str) -> None:
        """Forget a pipeline's model series (after a reload removed it)."""
        old = self._model_keys.pop(pipeline, None)
        if old is not None:
            self.model_info.remove(*old)
        self.fps.remove(pipeline)

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
        server = MetricsServer(self, config.bind, config.port)
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


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = 10  # seconds a slow client may hold a handler thread

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.server.metrics.render().encode()
            self._reply(200, CONTENT_TYPE, body)
        elif path == "/":
            self._reply(200, "text/plain; charset=utf-8", b"edge-agent: see /metrics\n")
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found\n")

    def _reply(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics http: " + format, *args)  # noqa: G003


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the request threads
    metrics: Metrics


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """The /metrics HTTP endpoint on its own thread.

    Attributes:
        port: the bound port (the real one when the config asked for port 0).
        bind: the bound address.
    """

    def __init__(self, metrics: Metrics, bind: str = "127.0.0.1", port: int = 9108) -> None:
        """Bind now (so an occupied port fails at start-up, not later)."""
        cls = _HttpServer6 if ":" in bind else _HttpServer
        self._httpd = cls((bind, port), _Handler)
        self._httpd.metrics = metrics
        self.bind = bind
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={
            "poll_interval": 0.2}, name="edge-agent-metrics", daemon=True)
        self._thread.start()
        logger.info("Prometheus metrics on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()
            thread.join(timeout)
        self._httpd.server_close()
