"""Shared pieces of the benchmarks: machine facts, clips, a local broker, the real egress path,
and interleaved measurement.

Interleaving: on a shared 2-core machine the load of other processes changes from second to
second. Every ratio is therefore measured as alternating short blocks of the runs it compares
(A B A B ...), a ratio per round from neighbouring blocks, and the median of the rounds; the
spread of the rounds is reported next to it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = (REPO.parent / "shared" / "models").resolve()
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_agent.config import ModelConfig, PipelineConfig, make_config  # noqa: E402
from edge_agent.default_models import default_models_dir  # noqa: E402


def shared_model(name: str) -> Path | None:
    """A file from ../shared/models, or None when it is not on this machine."""
    path = SHARED_MODELS / name
    return path if path.exists() else None


def default_model() -> tuple[Path, Path | None]:
    """The default model (BlazeFace full range) and its labels; run `edge-agent models fetch`."""
    d = default_models_dir()
    labels = d / "face.txt"
    return d / "face_detection_full_range_sparse.tflite", labels if labels.exists() else None


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from ai_edge_litert import __version__ as litert  # type: ignore[attr-defined]
    except Exception:
        litert = "?"
    import cv2
    import numpy as np

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()} {platform.machine()}",
            "litert": litert, "numpy": np.__version__, "opencv": cv2.__version__,
            "load_at_start": [round(x, 2) for x in os.getloadavg()]}


def median_cpu_us(fn: Callable[[], Any], n: int = 200, warm: int = 50) -> float:
    """Median CPU time of one ``fn()`` call in microseconds (process time, after ``warm``)."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t = time.process_time_ns()
        fn()
        times.append(time.process_time_ns() - t)
    return statistics.median(times) / 1e3


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; else the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_video(path: Path, seconds: float = 20.0, fps: float = 10.0) -> Path:
    """A 640x480 MJPEG clip of moving objects (the synthetic clip generator), once."""
    from edge_agent.sources.synthetic import write_clip

    if not path.exists():
        write_clip(path, seconds=seconds, fps=fps, episodes=[(0.1, seconds - 0.1)])
    return path


def pipeline_config(model: Path, labels: Path | None, source: dict[str, Any], *,
                    threads: int, name: str = "bench", **extra: Any) -> PipelineConfig:
    """A pipeline config for ``model`` on ``source``."""
    mcfg = ModelConfig(path=model, labels=labels, threads=threads)
    return PipelineConfig.model_validate({"name": name, "source": source,
                                          "model": mcfg.model_dump(), **extra})


@dataclass
class Egress:
    """The daemon's real way out: policy-sealed messages -> EgressGuard -> MqttTransport
    (SQLite outbox) -> a local mosquitto."""

    guard: Any
    transport: Any
    seal: Any
    host: str
    port: int
    device: str = "bench"
    prefix: str = "edge-agent"


@contextmanager
def local_egress(workdir: Path) -> Iterator[Egress | None]:
    """A mosquitto on a free port and the real transport and guard; None without mosquitto."""
    from tests.broker import Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        yield None
        return
    from edge_agent.mqtt.client import MqttTransport
    from edge_agent.privacy import new_seal
    from edge_agent.privacy.egress import EgressGuard

    broker = Mosquitto(workdir / "broker", persistence=False)
    broker.start()
    try:
        cfg = make_config(device_id="bench", state_dir=str(workdir / "state"),
                          mqtt={"host": broker.host, "port": broker.port})
        (workdir / "state").mkdir(parents=True, exist_ok=True)
        transport = MqttTransport(cfg, workdir / "state")
        seal = new_seal()
        guard = EgressGuard(transport, cfg.mqtt.topic_prefix, cfg.device_id, None, seal)
        transport.start()
        deadline = time.monotonic() + 10
        while not transport.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            yield Egress(guard, transport, seal, broker.host, broker.port)
        finally:
            transport.stop(5.0)
    finally:
        broker.stop()


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary folder for clips, brokers and outboxes."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        yield Path(tmp)


class ResultCounter:
    """Wraps a ``send``: timestamps every result sent, sets ``done`` after ``limit`` of them."""

    def __init__(self, send: Callable[[Any], bool], limit: int) -> None:
        self._send = send
        self.limit = limit
        self.times: list[float] = []
        self.done = threading.Event()

    def send(self, msg: Any) -> bool:
        ok = self._send(msg)
        if getattr(msg, "kind", "result") == "result":
            self.times.append(time.perf_counter())
            if len(self.times) >= self.limit:
                self.done.set()
        return ok


def steady_rate(times: list[float], skip: int = 2) -> float:
    """Results per second between result ``skip`` and the last (start-up excluded)."""
    t = times[skip:]
    return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0


def interleave(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every callable once per round, in a rotating order; collect their rates."""
    names = list(runs)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            out[n].append(runs[n]())
    return out


def ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Median of per-round ratios ``num[i] / den[i]``, with the min and max round."""
    rs = [a / b for a, b in zip(num, den, strict=True) if b > 0]
    if not rs:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "rounds": 0}
    return {"median": round(statistics.median(rs), 3), "min": round(min(rs), 3),
            "max": round(max(rs), 3), "rounds": len(rs)}


def dump(obj: Any) -> str:
    """JSON for the machine-readable copy of the figures."""
    return json.dumps(obj, indent=2, default=str)
