"""The chaos run: ``edge-agent run`` with real sources, a real model and a real broker, under
injected faults, with invariants checked after each.

Set-up (all on 127.0.0.1, all owned by the run and stopped by PID):

* mosquitto (persistence on); the agent reaches it only through :class:`TcpProxy`;
* an HTTP MJPEG stream (:class:`MjpegServer`) for the ``cam`` pipeline (camera health on), a
  synthetic 320x240 source for ``synth``; both on the default BlazeFace model;
* the agent's wall clock stepped by Debian's libfaketime preloaded into the agent process
  (:mod:`tests.chaos.clock`), so the wall clock can jump while the monotonic clock runs on,
  as on an NTP step (the fault is reported as skipped where libfaketime or gcc is missing);
* the systemd watchdog protocol: ``NOTIFY_SOCKET`` (a datagram socket the run reads) and
  ``WATCHDOG_USEC``, so the agent's health-gated ``WATCHDOG=1`` pings can be checked;
* ``state_dir`` on a small tmpfs the run mounts (root only), so the disk can fill up;
* a subscriber with a persistent session on the broker itself (not behind the proxy).

Faults: ``broker_restart``, ``network_cut``, ``network_stall``, ``stream_loss``,
``agent_kill``, ``kill_during_update``, ``kill_during_reload``, ``disk_full``,
``clock_jump``, ``cpu_starvation``. After each: the agent is online again, new results of
both pipelines arrive (the time from the end of the fault is its recovery time), every
pipeline serves a known model, and the durable streams are gap-free once drained. Thread and
fd counts of one agent process are compared between faults, and its RSS growth is bounded (no leak).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.signing import generate_key_pair, load_private_key
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.chaos.clock import WallClock, wall_clock_missing
from tests.chaos.harness import (
    DEVICE,
    PREFIX,
    ProcFigures,
    agent_config,
    proc_figures,
    seq_report,
)
from tests.chaos.mjpeg import MjpegServer
from tests.chaos.proxy import TcpProxy
from tests.e2e.agentproc import REPO, AgentProcess
from tests.e2e.recorder import Recorder, parse_ts

SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"
FAULTS = ("broker_restart", "network_cut", "network_stall", "stream_loss", "agent_kill",
          "kill_during_update", "kill_during_reload", "disk_full", "disk_full_offline",
          "clock_jump", "cpu_starvation")
LOSSY = {"disk_full_offline"}
"""Faults that may lose results by design (DELIVERY.md): each loss must be a seq gap that the
agent counted (``outbox.store_failed``), never a silent one."""
RECOVERY_LIMIT_S = 60.0  # a fault not recovered from within this is a failure
RSS_GROWTH_LIMIT_MB = 16.0
"""RSS one agent process may gain over the faults it lives through (reconnect buffers, SQLite
page cache, a swapped-in model's interpreter); a leak per fault grows past it. The 2 MB bound
on steady running is the soak's."""
STREAMS = ("results/synth", "results/cam", "events/cam")
WATCHDOG_S = 4.0
"""``WATCHDOG_USEC`` given to the agent: it pings every 2 s while healthy; a gap longer than
this is what systemd would kill the service for."""
CLOCK_JUMPS_S = (3 * 3600, -3 * 3600, 86400, -86400)


@dataclass(slots=True)
class FaultRecord:
    """What one kind of fault did over the run."""

    fault: str
    injected: int = 0
    recovery_s: list[float] = field(default_factory=list)
    lost: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["recovery_max_s"] = round(max(self.recovery_s), 2) if self.recovery_s else None
        out["recovery_s"] = [round(r, 2) for r in self.recovery_s]
        return out


class ChaosError(AssertionError):
    """An invariant did not hold."""


class ChaosRun:
    """One agent and its surroundings; :meth:`inject` runs a fault and checks the invariants.

    Args:
        tmp: a private folder.
        seed: for the random moments and durations.
        outage_s: (min, max) seconds a fault lasts.
        log: progress lines go here.
    """

    def __init__(self, tmp: Path, *, seed: int = 1, outage_s: tuple[float, float] = (3, 6),
                 log: Callable[[str], None] = print) -> None:
        self.tmp = tmp
        self.rng = random.Random(seed)
        self.outage_s = outage_s
        self.say = log
        models = ensure_default_models()
        self.models = {SHORT: models[SHORT], FULL: models[FULL]}
        self.known_sha = {sha256_file(p): name for name, p in self.models.items()}
        self.records = {f: FaultRecord(f) for f in FAULTS}
        self.version = 0  # the last model version pushed
        self.state_dir = tmp / "state"
        self.mounted = False
        self.clock: WallClock | None = None
        self.clock_missing = wall_clock_missing()
        self.watchdog = WatchdogListener()
        self.agent: AgentProcess | None = None
        self.agents: list[AgentProcess] = []
        self._accepted_gaps = 0  # seq gaps of LOSSY faults, counted by the agent
        self.baseline: ProcFigures | None = None  # of the current agent process
        self.figures: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ set-up

    def start(self) -> ChaosRun:
        """Broker, proxy, stream, keys, config, subscriber and the agent."""
        self.broker = Mosquitto(self.tmp / "broker").start()
        self.proxy = TcpProxy(self.broker.host, self.broker.port).start()
        self.stream = MjpegServer(fps=10).start()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._mount_state_dir()
        priv, _pub, _ = generate_key_pair(self.tmp / "keys")
        self.key = load_private_key(priv)
        self.config_path = self.tmp / "agent.yaml"
        self.score = 0.5
        self._write_config()
        if self.clock_missing is None:
            self.clock = WallClock(self.tmp / "clock")
        self.watchdog.start()
        self.rec = Recorder(self.broker.host, self.broker.port, [f"{PREFIX}/{DEVICE}/#"],
                            client_id=f"chaos-rec-{uuid.uuid4().hex[:8]}", clean=False)
        self.rec.start()
        self._start_agent()
        self._wait_flowing(time.monotonic(), "start")
        self.baseline = self._settled_figures()
        return self

    def _write_config(self) -> None:
        model = self.models[SHORT]
        model_cfg = {"path": str(model), "decoder": "anchors", "threads": 1,
                     "labels": str(labels_path(SHORT))}
        agent_config(
            self.config_path, state_dir=self.state_dir, host=self.proxy.host,
            port=self.proxy.port,
            pipelines=[
                {"name": "synth", "model": model_cfg, "score_threshold": self.score,
                 "source": {"type": "synthetic", "fps": 10, "width": 320, "height": 240}},
                {"name": "cam", "model": model_cfg, "score_threshold": self.score,
                 "source": {"type": "camera", "uri": self.stream.url},
                 "camera_health": {"enabled": True}},
            ],
            updates={"public_keys": [str(self.tmp / "keys" / "signing.pub")]},
            mqtt={"keepalive": 5})  # a stalled link is noticed within ~7.5 s

    def _mount_state_dir(self) -> None:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs",
                               str(self.state_dir)], capture_output=True, check=False)
        self.mounted = done.returncode == 0

    def _start_agent(self) -> None:
        env = {"NOTIFY_SOCKET": self.watchdog.name,
               "WATCHDOG_USEC": str(int(WATCHDOG_S * 1_000_000)),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        if self.clock is not None:
            env.update(self.clock.env())
        self.agent = AgentProcess(self.config_path, env=env)
        self.agents.append(self.agent)
        self.baseline = None

    def close(self) -> dict[str, Any]:
        """Stop the agent (SIGTERM: must exit 0), drain, check every stream; stop the rest."""
        code = None
        try:
            if self.agent is not None and self.agent.proc.poll() is None:
                code = self.agent.terminate()
            time.sleep(1.0)
            reports = {s: seq_report(s, self._payloads(s)) for s in STREAMS}
        finally:
            self.rec.close()
            self.watchdog.close()
            self.stream.stop()
            self.proxy.close()
            self.broker.stop()
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.state_dir)], check=False)
        return {"exit_code": code, "streams": {s: {
            "first": r.first, "last": r.last, "distinct": r.distinct, "duplicates": r.duplicates,
            "missing": len(r.missing), "boots": r.boots} for s, r in reports.items()},
            "faults": [r.summary() for r in self.records.values()],
            "figures": self.figures}

    # ------------------------------------------------------------------ observing

    def _payloads(self, stream: str, since: int = 0) -> list[dict[str, Any]]:
        return self.rec.json(f"{PREFIX}/{DEVICE}/{stream}", since)

    def _wait(self, what: str, pred: Callable[[], bool], timeout: float = RECOVERY_LIMIT_S
              ) -> float:
        """Seconds until ``pred()`` held; ChaosError (with the agent's log tail) after timeout."""
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise ChaosError(f"{what}: not within {timeout:.0f}s\n{self._log_tail()}")
            if self.agent is not None and self.agent.proc.poll() is not None:
                raise ChaosError(f"{what}: the agent died (exit {self.agent.proc.returncode})"
                                 f"\n{self._log_tail()}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def _log_tail(self) -> str:
        return "" if self.agent is None else self.agent.log()[-3000:]

    def _wait_flowing(self, since_mono: float, what: str) -> float:
        """Seconds from ``since_mono`` until new results of both pipelines arrived (at the
        subscriber) and the newest retained status says ``online`` for the current process."""
        def arrived(suffix: str, pred: Callable[[dict[str, Any]], bool]) -> float | None:
            for c in self.rec.select(suffix):
                if c.mono >= since_mono and c.payload and pred(c.json()):
                    return c.mono
            return None

        times: list[float] = []

        def online() -> bool:
            """The newest status is ``online`` and from the process that makes results now."""
            statuses = [c.json() for c in self.rec.select(f"{DEVICE}/status") if c.payload]
            results = self._payloads("results/synth")
            return bool(statuses and results) and statuses[-1].get("state") == "online" and (
                statuses[-1].get("boot_id") == results[-1].get("boot_id"))

        def done() -> bool:
            times.clear()
            for suffix in ("/results/synth", "/results/cam"):
                t = arrived(suffix, lambda p: not p.get("replayed"))
                if t is None:
                    return False
                times.append(t)
            return online()

        self._wait(f"{what}: results of both pipelines and online", done)
        return max(times) - since_mono

    def _wait_drained(self, what: str, expected: int = 0) -> int:
        """Wait until the durable streams show exactly ``expected`` new gaps (0: gap-free);
        return how many are missing then, or after the limit."""
        def missing() -> int:
            gaps = sum(len(seq_report(s, self._payloads(s)).missing) for s in STREAMS)
            return gaps - self._accepted_gaps

        try:
            self._wait(f"{what}: streams gap-free", lambda: missing() == expected, timeout=45)
            return expected
        except ChaosError:
            if self.agent is not None and self.agent.proc.poll() is not None:
                raise
            return missing()

    def _store_failed(self) -> int:
        """The current process's ``outbox.store_failed`` from its newest stats message."""
        assert self.agent is not None
        time.sleep(1.5)  # stats come every second
        for stats in reversed(self._payloads("stats")):
            return int((stats.get("outbox") or {}).get("store_failed", 0))
        return 0

    def _check_models(self, what: str) -> None:
        """Each pipeline's retained model state names a known model as active, and the last
        result of each pipeline was made by one."""
        for name in ("synth", "cam"):
            states = self._payloads(f"model/{name}/state")
            if not states:
                raise ChaosError(f"{what}: no model state for {name}")
            active = states[-1].get("active") or {}
            if active.get("sha256") not in self.known_sha:
                raise ChaosError(f"{what}: {name} serves an unknown model {active}")
            last = self._payloads(f"results/{name}")[-1]
            if last["model"]["sha256"] not in self.known_sha:
                raise ChaosError(f"{what}: {name} result from an unknown model")

    def _settled_figures(self) -> ProcFigures:
        """The agent's figures once its thread count is steady for 2 s."""
        assert self.agent is not None
        last = proc_figures(self.agent.pid)
        for _ in range(20):
            time.sleep(1.0)
            now = proc_figures(self.agent.pid)
            if (now.threads, now.fds) == (last.threads, last.fds):
                return now
            last = now
        return last

    def _check_leaks(self, fault: str) -> None:
        assert self.agent is not None
        if self.baseline is None:  # a new process: its first figures are its baseline
            self.baseline = self._settled_figures()
            now = self.baseline
        else:
            now = self._settled_figures()
            deadline = time.monotonic() + 20
            while ((now.threads > self.baseline.threads or now.fds > self.baseline.fds)
                   and time.monotonic() < deadline):
                time.sleep(1.0)
                now = proc_figures(self.agent.pid)
            if now.threads > self.baseline.threads:
                raise ChaosError(f"after {fault}: {now.threads} threads, "
                                 f"{self.baseline.threads} before")
            if now.fds > self.baseline.fds:
                raise ChaosError(f"after {fault}: {now.fds} fds, {self.baseline.fds} before")
            grown = (now.rss_kb - self.baseline.rss_kb) / 1024
            if grown > RSS_GROWTH_LIMIT_MB:
                raise ChaosError(f"after {fault}: RSS grew {grown:.1f} MB in this process")
        self.figures.append({"after": fault, "pid": self.agent.pid,
                             "rss_mb": round(now.rss_kb / 1024, 1), "fds": now.fds,
                             "threads": now.threads})

    def silent_losses(self) -> list[str]:
        """Results missing without a seq gap: ``synth`` is a paced file-like source (every
        frame in order, none dropped), so within one process each frame index with no result
        must be matched by a missing seq (a loss the agent showed)."""
        frames: dict[str, set[int]] = {}
        seqs: dict[str, set[int]] = {}
        for p in self._payloads("results/synth"):
            boot = str(p.get("boot_id"))
            frames.setdefault(boot, set()).add(int(p["frame"]["index"]))
            seqs.setdefault(boot, set()).add(int(p["seq"]))
        out = []
        for boot, idx in frames.items():
            no_result = len(range(min(idx), max(idx) + 1)) - len(idx)
            s = seqs[boot]
            seq_gaps = len(range(min(s), max(s) + 1)) - len(s)
            if no_result > seq_gaps:
                out.append(f"boot {boot[:8]}: {no_result} frames have no result, only "
                           f"{seq_gaps} seq gaps")
        return out

    def tracebacks(self) -> list[str]:
        """Tracebacks in any agent run's log (a crashed thread is a failure)."""
        found = []
        for agent in self.agents:
            text = agent.log_path.read_text(errors="replace")
            for chunk in text.split("Traceback (most recent call last):")[1:]:
                found.append(f"{agent.log_path.name}: {chunk.strip().splitlines()[-1][:200]}")
        return found

    # ------------------------------------------------------------------ faults

    def inject(self, fault: str) -> None:
        """Run one fault, then check every invariant; records recovery and losses."""
        rec = self.records[fault]
        outage = self.rng.uniform(*self.outage_s)
        self.say(f"chaos: {fault} ({outage:.1f}s)")
        failed_before = self._store_failed() if fault in LOSSY else 0
        ended = getattr(self, f"_fault_{fault}")(outage, rec)
        if ended is None:  # skipped
            return
        rec.injected += 1
        rec.recovery_s.append(self._wait_flowing(ended, fault))
        self._check_models(fault)
        # a lossy fault's gaps show once messages stored after it arrive: wait for as many as
        # the agent counted (and no more); any other fault must drain to no gap at all
        counted = self._store_failed() - failed_before if fault in LOSSY else 0
        lost = self._wait_drained(fault, expected=counted)
        if lost and fault not in LOSSY:
            raise ChaosError(f"{fault}: {lost} messages lost")
        if fault in LOSSY:
            if lost != counted:
                raise ChaosError(f"{fault}: {lost} seq gaps, but the agent counted {counted}")
            rec.notes.append(f"{lost} lost, all counted in outbox.store_failed and seen as gaps")
            self._accepted_gaps += lost
        rec.lost += lost
        self._check_leaks(fault)
        self.say(f"chaos: {fault} recovered in {rec.recovery_s[-1]:.1f}s, lost {rec.lost}")

    def _fault_broker_restart(self, outage: float, rec: FaultRecord) -> float:
        self.broker.stop()
        time.sleep(outage)
        self.broker.start()
        return time.monotonic()

    def _fault_network_cut(self, outage: float, rec: FaultRecord) -> float:
        self.proxy.cut()
        time.sleep(outage)
        self.proxy.restore()
        return time.monotonic()

    def _fault_network_stall(self, outage: float, rec: FaultRecord) -> float:
        self.proxy.stall()
        time.sleep(outage * 2)  # long enough for the keepalive to notice
        self.proxy.restore()
        return time.monotonic()

    def _fault_stream_loss(self, outage: float, rec: FaultRecord) -> float:
        mark = self.rec.mark()
        self.stream.stop()
        time.sleep(outage)
        self.stream.start()
        ended = time.monotonic()
        self._wait("stream_loss: source_down and source_up events", lambda: {"source_down",
                   "source_up"} <= {e.get("event") for e in self._payloads("events/cam", mark)})
        return ended

    def _kill(self, delay: float) -> float:
        assert self.agent is not None
        time.sleep(delay)
        self.agent.kill()
        time.sleep(0.5)
        self._start_agent()
        return time.monotonic()

    def _fault_agent_kill(self, outage: float, rec: FaultRecord) -> float:
        return self._kill(self.rng.uniform(0.0, outage))

    def _fault_kill_during_update(self, outage: float, rec: FaultRecord) -> float:
        active = (self._payloads("model/synth/state")[-1].get("active") or {})
        target = FULL if self.known_sha.get(active.get("sha256", "")) == SHORT else SHORT
        path = self.models[target]
        self.version += 1
        manifest = build_manifest(name=target.replace("_", "-"), version=self.version,
                                  sha256=sha256_file(path), size=path.stat().st_size,
                                  key=self.key, labels=labels_path(target).read_text())
        command = {"request_id": uuid.uuid4().hex, "pipeline": "synth",
                   "manifest": dict(manifest.raw),
                   "data": base64.b64encode(path.read_bytes()).decode()}
        self.rec.publish(f"{PREFIX}/{DEVICE}/cmd/model/update", json.dumps(command).encode())
        ended = self._kill(self.rng.uniform(0.0, 3.0))
        rec.notes.append(f"update to {target} v{self.version}")
        return ended

    def _fault_kill_during_reload(self, outage: float, rec: FaultRecord) -> float:
        assert self.agent is not None
        self.score = 0.45 if self.score == 0.5 else 0.5
        self._write_config()
        os.kill(self.agent.pid, signal.SIGHUP)
        return self._kill(self.rng.uniform(0.0, 1.5))

    def _fault_disk_full(self, outage: float, rec: FaultRecord) -> float | None:
        if not self.mounted:
            rec.skipped = "state_dir is not a tmpfs this run could mount (needs root)"
            return None
        filler = self.state_dir / "filler.bin"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        time.sleep(outage)
        filler.unlink()
        return time.monotonic()

    def _fault_disk_full_offline(self, outage: float, rec: FaultRecord) -> float | None:
        """The broker unreachable while the disk is full: results cannot be stored."""
        self.proxy.cut()
        try:
            return self._fault_disk_full(outage, rec)
        finally:
            self.proxy.restore()

    def _fault_clock_jump(self, outage: float, rec: FaultRecord) -> float | None:
        """The wall clock steps by hours or a day (libfaketime) while results wait in the
        outbox (network cut), stays there while they are delivered and new ones are made,
        then steps back. Checked besides the usual invariants: the step reached the agent
        (results' timestamps), the watchdog pings never stopped, first deliveries kept ``seq``
        order; the drain that follows checks that nothing stored was dropped."""
        if self.clock is None:
            rec.skipped = self.clock_missing
            return None
        jump = self.rng.choice(CLOCK_JUMPS_S)
        began, mark = time.monotonic(), self.rec.mark()
        self.proxy.cut()  # results wait in the outbox, stored under the real clock
        time.sleep(outage / 2)
        self.clock.set(jump)
        time.sleep(outage / 2 + 1.0)  # libfaketime re-reads its file within a second
        self.proxy.restore()  # delivered under the stepped clock
        stepped = self._wait("clock_jump: results stamped with the stepped clock",
                             lambda: self._stepped(mark, jump), timeout=30)
        time.sleep(outage)  # running on the stepped clock
        self.clock.set(0)
        time.sleep(1.5)
        ended = time.monotonic()
        gap = self.watchdog.longest_gap(began, ended)
        if gap is None or gap > WATCHDOG_S:
            raise ChaosError(f"clock_jump {jump:+d}s: watchdog pings stopped for "
                             f"{'the whole fault' if gap is None else f'{gap:.1f}s'} "
                             f"(systemd would have killed the agent)\n{self._log_tail()}")
        for stream in STREAMS:
            self._check_order(stream, mark, f"clock_jump {jump:+d}s")
        rec.notes.append(f"wall clock {jump:+d}s for {outage + stepped + 1:.0f}s (the first "
                         f"half offline), then back; longest watchdog gap {gap:.1f}s")
        return ended

    def _stepped(self, since: int, jump: int) -> bool:
        """Whether a new result arrived whose timestamp carries the clock step."""
        for c in self.rec.select("/results/synth", since):
            if c.payload:
                p = c.json()
                if not p.get("replayed") and abs(parse_ts(p["ts"]) - c.wall - jump) < 60:
                    return True
        return False

    def _check_order(self, stream: str, since: int, what: str) -> None:
        """First deliveries (per boot) of ``stream`` that arrived from ``since`` on come in
        ``seq`` order (DELIVERY.md); resends may repeat earlier values."""
        seen: set[tuple[str, int]] = set()
        last: dict[str, int] = {}
        for i, c in enumerate(self.rec.select()):  # i: the position :meth:`mark` counts
            if not c.payload or not c.topic.endswith(f"/{stream}"):
                continue
            p = c.json()
            boot, seq = str(p.get("boot_id")), int(p["seq"])
            if (boot, seq) in seen:
                continue
            seen.add((boot, seq))
            if i >= since and seq < last.get(boot, 0):
                raise ChaosError(f"{what}: {stream} seq {seq} first arrived after "
                                 f"{last[boot]}")
            last[boot] = max(last.get(boot, 0), seq)

    def _fault_cpu_starvation(self, outage: float, rec: FaultRecord) -> float:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(max(2, (os.cpu_count() or 2) * 2))]
        try:
            time.sleep(outage * 2)
        finally:
            for h in hogs:
                h.kill()
                h.wait(5)
        return time.monotonic()


class WatchdogListener:
    """``NOTIFY_SOCKET`` for the agent processes: an abstract datagram socket whose
    ``WATCHDOG=1`` arrival times (monotonic) are kept."""

    def __init__(self) -> None:
        self.name = f"@edge-agent-chaos-{uuid.uuid4().hex[:12]}"
        self.pings: list[float] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0" + self.name[1:])
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._loop, name="chaos-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            sock = self._sock
            if sock is None:
                return
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if b"WATCHDOG=1" in data.split(b"\n"):
                with self._lock:
                    self.pings.append(time.monotonic())

    def longest_gap(self, start: float, end: float) -> float | None:
        """The longest time without a ping between ``start`` and ``end`` (None: no ping)."""
        with self._lock:
            inside = [t for t in self.pings if start <= t <= end]
        if not inside:
            return None
        points = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(points))

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        if self._thread is not None:
            self._thread.join(2)


def run(tmp: Path, faults: list[str], *, seed: int = 1, outage_s: tuple[float, float] = (3, 6),
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``faults`` in order; the close-down report (see :meth:`ChaosRun.close`)."""
    chaos = ChaosRun(tmp, seed=seed, outage_s=outage_s, log=log)
    report: dict[str, Any] = {}
    try:
        chaos.start()
        for fault in faults:
            chaos.inject(fault)
    finally:
        report = chaos.close()
        report["tmpfs"] = chaos.mounted
    return report


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(yaml.safe_dump(run(Path(d), list(FAULTS))))
