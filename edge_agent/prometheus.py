"""A small Prometheus client: counters, gauges and histograms with labels, the text exposition
format 0.0.4, and an HTTP endpoint on its own thread.

No dependency: the few metric types edge-agent needs fit here, and the hot path (a histogram
child's ``observe``) stays a bisect and a locked add. :mod:`edge_agent.metrics` defines the
agent's own metrics on top of this.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

from edge_agent.capped_http import CappedHTTPServer

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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


class HistogramChild:
    """One label set of a histogram: per-bucket counts and the sum."""

    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); last is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count ``value`` into its bucket (cheap: called per frame and stage)."""
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

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.buckets)

    def observe(self, value: float) -> None:
        """Observe into the unlabelled histogram."""
        self.labels().observe(value)

    def _render_child(self, key: tuple[str, ...], child: HistogramChild) -> Iterable[str]:
        counts, total = child.snapshot()
        running = 0
        for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
            running += n
            le = 'le="' + _fmt(bound) + '"'
            yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}"
        yield f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(total)}"
        yield f"{self.name}_count{_labels(self.labelnames, key)} {running}"


_MetricT = TypeVar("_MetricT", bound=_Metric)


class Registry:
    """Metrics by name, plus collectors that refresh values just before each scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def _add(self, metric: _MetricT) -> _MetricT:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Counter:
        """Register a counter."""
        return self._add(Counter(name, help_, labelnames))

    def gauge(self, name: str, help_: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Register a gauge."""
        return self._add(Gauge(name, help_, labelnames))

    def histogram(self, name: str, help_: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        """Register a histogram."""
        return self._add(Histogram(name, help_, labelnames, buckets))

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


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer
    timeout = 2  # seconds per receive: a scrape is one short request

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.server.render().encode()
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


class _HttpServer(CappedHTTPServer):
    """The /metrics server: a flood of held connections is closed at once (see
    CappedHTTPServer); the request threads are joined on close."""

    daemon_threads = False  # server_close() joins the request threads
    render: Callable[[], str]

    def __init__(self, address: tuple[str, int], max_connections: int = 16) -> None:
        super().__init__(address, _Handler, max_connections, "metrics")

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("metrics http: error serving %s", client_address)


class PrometheusServer:
    """A /metrics HTTP endpoint on its own thread, serving what ``render()`` returns.

    Attributes:
        port: the bound port (the real one when the config asked for port 0).
        bind: the bound address.
    """

    def __init__(self, render: Callable[[], str], bind: str = "127.0.0.1",
                 port: int = 9108, max_connections: int = 16) -> None:
        """Bind now (so an occupied port fails at start-up, not later)."""
        self._httpd = _HttpServer((bind, port), max_connections)
        self._httpd.render = render
        self.bind = bind
        self.port: int = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The scrape URL."""
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={
            "poll_interval": 0.2}, name="prometheus-http", daemon=True)
        self._thread.start()
        logger.info("Prometheus metrics on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()
            thread.join(timeout)
        self._httpd.server_close()
