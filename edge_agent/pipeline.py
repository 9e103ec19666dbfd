"""One pipeline: source -> [motion] -> mask -> preprocess -> invoke -> decode -> [track]
-> policy -> egress guard.

Three threads joined by bounded queues, so capture and preprocessing of the next frame and
decoding and publishing of the previous one overlap with the invoke of the current one (TFLite
releases the GIL while it runs):

    capture   read, gate, mask, preprocess      -> q_in  (file: 2 deep; live: 1, newest wins)
    infer     the runtime, swaps between frames -> q_out (2 deep)
    post      decode, track, policy, publish

File sources hand over every frame in order (the queue blocks); live sources replace the queued
frame with a newer one and count the drop. A failing source is reopened with backoff and shown
in status; it never stops the daemon. Each thread ends by passing an end marker downstream, so
``stop()`` returns as soon as the source's ``read`` does and the queued frames are done.

Preprocessing writes into the bundle's rotating buffers (``bundle.py`` makes 5: one being
prepared, two queued, one being copied into the interpreter, one spare); the model inputs are
the only per-frame buffers the pipeline itself fills.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from edge_agent.bundle import ModelBundle, outputs_finite
from edge_agent.config import PipelineConfig
from edge_agent.credentials import scrub_text
from edge_agent.errors import SourceError
from edge_agent.runtime.threads_auto import PipelineTrial, ThreadChoice, TrialSlot, choice_again
from edge_agent.shadow_headroom import ArrivalClock
from edge_agent.sources.conform import conform_image
from edge_agent.thermal import FrameThinner
from edge_agent.types import (
    EncodedPixels,
    Frame,
    HealthEvent,
    Inference,
    Result,
    TargetChange,
    TrackEvent,
    Transform,
)

if TYPE_CHECKING:  # the agent hands these in; the pipeline module does not import the stages
    from edge_agent.camera_health import CameraHealthMonitor
    from edge_agent.config import SourceConfig
    from edge_agent.contract.messages import OutgoingMessage
    from edge_agent.motion import MotionGate
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.sources.base import Source
    from edge_agent.tracking import IouTracker
    from edge_agent.zones import ZoneTracker


class ShadowSink(Protocol):
    """A shadow candidate (:class:`edge_agent.shadow.ShadowRunner`): offered decoded frames,
    never waited for."""

    share_inputs: bool  # wants the preprocessed inputs (same input tensors as the active)

    def offer(self, frame: Frame, inputs: Sequence[np.ndarray] | None, transform: Transform,
              active: Inference, active_ms: float, idle: bool = True,
              headroom_s: float | None = None) -> None:
        """Take one frame and the active model's output (never blocks)."""


class FrameTap(Protocol):
    """A live-view tap: frames are offered only while someone is watching."""

    def wanted(self) -> bool:
        """Whether anyone is watching now."""
        ...

    def offer(self, frame: Frame, result: Result) -> None:
        """A frame and its result, for the viewer (must not block)."""
        ...

logger = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "invoke", "decode", "policy", "publish")
_END = None  # end marker passed down the queues when a thread finishes
POLL_S = 0.5  # queue and source waits: bounds heartbeat age and stop latency
MAX_THERMAL_PAUSE_S = 5.0  # the longest wait between a file source's frames when hot


@dataclass(frozen=True, slots=True)
class Tuning:
    """Process-wide settings a pipeline applies when it starts (see BENCHMARKS.md).

    Attributes:
        cv2_threads: OpenCV's own worker threads (resize, colour conversion); on a small board
            its pool competes with the interpreter's threads for the same cores. None leaves
            OpenCV's default.
        switch_interval_s: the interpreter's GIL hand-over interval; the inference thread needs
            the GIL back the moment ``invoke()`` returns, and Python's default (5 ms) can keep
            it waiting behind the post thread. Only ever lowered. None leaves it.
        aux_nice: niceness added to the capture and post threads (0: none), so the inference
            thread and its interpreter workers win a contended core.
        model_scale_decode: decode JPEG/MJPEG frames only as large as the model's input
            needs (JPEG DCT scaling to 1/2, 1/4 or 1/8 while both sides stay at least the
            input's), where nothing needs the full frame (see ``Pipeline._decode_when_needed``).
            Off: every frame the model sees is decoded in full (the benchmarks' baseline).
    """

    cv2_threads: int | None = 1
    switch_interval_s: float | None = 0.001
    aux_nice: int = 0
    model_scale_decode: bool = True


DEFAULT_TUNING = Tuning()


def apply_process_tuning(tuning: Tuning) -> None:
    """Apply the process-wide parts of ``tuning`` (OpenCV threads, GIL interval)."""
    if tuning.cv2_threads is not None and cv2.getNumThreads() != tuning.cv2_threads:
        cv2.setNumThreads(tuning.cv2_threads)
    if tuning.switch_interval_s is not None and sys.getswitchinterval() > tuning.switch_interval_s:
        sys.setswitchinterval(tuning.switch_interval_s)


def _lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's niceness by ``increment`` (Linux: per-thread; else no-op)."""
    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError:  # not permitted or not supported: run at the normal priority
        logger.debug("could not lower the priority of %s", threading.current_thread().name)


def _thread_choice(bundle: ModelBundle, trial: ThreadChoice | None) -> dict[str, Any]:
    """``threads: auto``: the mode, each candidate's median invoke ms at load and, once a
    trial in the pipeline has decided (``trial``), each one's frames per second there."""
    choice = getattr(bundle, "thread_choice", None)
    if choice is None:
        return {}
    out = {"threads_mode": "auto",
           "threads_measured": ", ".join(f"{n}: {ms} ms"
                                         for n, ms in sorted(choice.median_ms.items()))}
    if trial is not None:
        out["threads_pipeline"] = ", ".join(
            f"{n}: {fps} fps" for n, fps in sorted(trial.pipeline_fps.items()))
    return out


def _new_trial(bundle: ModelBundle, slot: TrialSlot | None,
               choice: ThreadChoice | None) -> PipelineTrial | None:
    """``threads: auto`` with more than one candidate, on a runtime that can change its CPU
    interpreter: the trial of the candidates in the running pipeline (``choice``: the pick at
    load, or what a trial made again starts from; None: no trial)."""
    if choice is None or len(choice.candidates) < 2 \
            or not hasattr(bundle.runtime, "cpu_variant"):
        return None
    return PipelineTrial(bundle.runtime, choice, slot=slot)


@dataclass(slots=True)
class _Item:
    frame: Frame
    inputs: list[np.ndarray]
    transform: Transform
    bundle: ModelBundle
    t_capture: float
    outputs: list[np.ndarray] | None = None
    inference_ms: float = 0.0


class _Stats:
    """Rolling per-pipeline figures for status, stats and metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames = 0  # frames read from the source
        self.inferred = 0
        self.published = 0
        self.dropped = 0  # frames the pipeline dropped (live sources, busy)
        self.gated = 0  # frames the motion gate skipped
        self.bad_frames = 0  # frames skipped as unusable (empty, too large, odd pixel type)
        self.errors = 0
        self.inference_ms: deque[float] = deque(maxlen=256)
        self.done_times: deque[float] = deque(maxlen=64)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            ms = sorted(self.inference_ms)
            times = list(self.done_times)
            fps = 0.0
            if len(times) >= 2 and times[-1] > times[0]:
                fps = (len(times) - 1) / (times[-1] - times[0])
            if times and time.monotonic() - times[-1] > 5.0:
                fps = 0.0
            return {
                "frames": self.frames, "inferred": self.inferred, "published": self.published,
                "dropped": self.dropped, "gated": self.gated, "errors": self.errors,
                "bad_frames": self.bad_frames,
                "fps": round(fps, 2),
                "inference_ms_p50": round(ms[len(ms) // 2], 2) if ms else None,
                "inference_ms_p95": round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 2)
                if ms else None,
            }


class Pipeline:
    """Runs one configured pipeline on its own threads.

    Args:
        cfg: the pipeline's config.
        bundle: the model to start with.
        source_factory: makes a (not yet opened) source from ``cfg.source``.
        policy: the pipeline's privacy policy (masks, result and snapshot messages).
        send: the egress guard's ``send``: the only way out of the device.
        gate: an optional motion gate (``check(image, ts) -> bool``).
        tracker: an optional tracker (``update(detections, ts) -> (detections, events)``).
        zones: an optional :class:`~edge_agent.zones.ZoneTracker` (needs ``tracker``).
        view: an optional live-view tap (``wanted() -> bool``, ``offer(frame, result)``);
            offered frames cost nothing unless someone is watching.
        health: an optional camera-health monitor (``check(image, now, ts, small) -> events``,
            ``source_event(up, ts) -> event``, ``status()``, ``live``).
        on_inference: called after every inference with ``(ok, finite, sha256)`` (the updater
            watch; sha256 names the model that ran, so a swap's last old frames don't count).
        observe: optional ``(pipeline, stage, seconds)`` metrics callback.
        tuning: process-wide thread settings applied at start (default :data:`DEFAULT_TUNING`).
        thermal: optional ``() -> factor`` (:meth:`edge_agent.thermal.ThermalMonitor.factor`):
            below 1.0 a live source's frames are thinned to that share, a file source waits
            longer between frames (thermal-aware pacing).
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        bundle: ModelBundle,
        *,
        source_factory: Callable[[SourceConfig], Source],
        policy: PrivacyPolicy,
        send: Callable[[OutgoingMessage], bool],
        gate: MotionGate | None = None,
        tracker: IouTracker | None = None,
        zones: ZoneTracker | None = None,
        view: FrameTap | None = None,
        health: CameraHealthMonitor | None = None,
        on_inference: Callable[[bool, bool, str], None] | None = None,
        observe: Callable[[str, str, float], None] | None = None,
        tuning: Tuning | None = None,
        thermal: Callable[[], float] | None = None,
        trial_slot: TrialSlot | None = None,
    ) -> None:
        """``trial_slot``: shared by the pipelines of a process so that their ``threads: auto``
        trials measure one at a time (None: this pipeline's trial does not wait)."""
        self.cfg = cfg
        self.name = cfg.name
        self._bundle = bundle
        self._source_factory = source_factory
        self._policy = policy
        self._send = send
        self._gate = gate
        self._tracker = tracker
        self._zones = zones
        self.view = view
        self._health = health
        self._source_up: bool | None = None  # for source_up/source_down events
        self.on_inference = on_inference
        # a shadow candidate (edge_agent.shadow.ShadowRunner): offered decoded frames, never
        # waited for; ``arrivals`` tells it when the next frame is due (its idle budget)
        self.shadow: ShadowSink | None = None
        self.arrivals = ArrivalClock()
        self._observe = observe
        self.tuning = tuning or DEFAULT_TUNING
        self._thermal = thermal
        self._thinner = FrameThinner()
        self.thermal_factor = 1.0
        self._stop = threading.Event()
        self._capture_done = threading.Event()
        self._infer_done = threading.Event()
        self._q_in: queue.Queue[_Item | None] = queue.Queue(maxsize=2)
        self._q_out: queue.Queue[_Item | None] = queue.Queue(maxsize=2)
        self._threads: list[threading.Thread] = []
        self._pending_swap: tuple[ModelBundle, threading.Event] | None = None
        self._swap_lock = threading.Lock()
        # a swapped-in bundle's preprocessor may be used by capture and infer at once
        self._prep_lock = threading.Lock()
        self.stats = _Stats()
        self.state = "starting"
        self.source_error: str | None = None
        self.source_dropped = 0
        self.source_bad_lines = 0  # malformed sensor lines the source skipped
        self._last_frame: Frame | None = None
        self._last_bad_frame: str | None = None
        self._heartbeats: dict[str, float] = {}
        self.stage_ms: dict[str, float] = {}  # per stage, a moving mean (the live view)
        self._last_key: tuple[object, ...] | None = None
        self._last_publish = 0.0
        self.target_changes = 0  # execution-target changes (failovers and returns)
        self.on_target_change: Callable[[str, TargetChange], None] | None = None
        self._hook_targets(bundle)
        self._trial_slot = trial_slot
        # threads: auto, tried again on the real frames
        self._trial = _new_trial(bundle, trial_slot, getattr(bundle, "thread_choice", None))
        self._settled: ThreadChoice | None = None  # an earlier trial's outcome, same model
        self._retry_budget: int | None = None  # try_threads_again() asked, not yet done

    # ------------------------------------------------------------------ lifecycle

    @property
    def bundle(self) -> ModelBundle:
        """The model serving now."""
        return self._bundle

    @property
    def thread_trial(self) -> PipelineTrial | None:
        """``threads: auto``'s trial in this pipeline for the model serving now (None without
        one); ``active`` while it measures, ``choice`` once it has decided."""
        return self._trial

    def try_threads_again(self, budget: int) -> None:
        """``threads: auto``: try the thread counts again in the running pipeline, 1 up to
        ``budget`` (or the count serving now, if more). The pipeline set asks this when other
        pipelines came or went; the inference thread does it between frames. Nothing happens
        for a fixed count or a delegate."""
        with self._swap_lock:
            self._retry_budget = budget

    def _trial_outcome(self) -> ThreadChoice | None:
        """The latest decided trial's outcome for the model serving now (status)."""
        trial = self._trial
        return trial.choice if trial is not None and trial.choice is not None \
            else self._settled

    def _apply_retry(self) -> None:
        with self._swap_lock:
            budget, self._retry_budget = self._retry_budget, None
        bundle = self._bundle
        load = getattr(bundle, "thread_choice", None)
        if budget is None or load is None or bundle.runtime.info.delegate is not None:
            return  # a fixed count, or a delegate serves: not ours to try
        old = self._trial
        if old is not None:
            old.abort()
            self._settled = old.choice or self._settled
        self._trial = _new_trial(bundle, self._trial_slot,
                                 choice_again(load, int(bundle.runtime.info.threads), budget))
        if self._trial is not None:
            logger.info("pipeline %s: threads auto: the pipelines changed; trying %s threads "
                        "again", self.name, ", ".join(map(str, self._trial.load_choice.candidates)))

    def start(self) -> None:
        """Start the capture, inference and post threads."""
        apply_process_tuning(self.tuning)
        now = time.monotonic()
        self._heartbeats = {"capture": now, "infer": now, "post": now}
        for target, name in ((self._capture_loop, "capture"), (self._infer_loop, "infer"),
                             (self._post_loop, "post")):
            t = threading.Thread(target=target, name=f"{self.name}-{name}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop in data-flow order: the source first, then inference, then publishing."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                logger.error("pipeline %s: thread %s did not stop within %.0fs",
                             self.name, t.name, timeout)
        self._threads = []

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads (a finite source ends on its own)."""
        for t in self._threads:
            t.join(timeout)

    def healthy(self, now: float | None = None) -> bool:
        """Whether every stage's heartbeat is fresh (a finished pipeline is healthy)."""
        if self.state in {"finished", "stopped"}:
            return True
        now = time.monotonic() if now is None else now
        limit = self.cfg.stall_timeout_s
        return all(now - hb < limit for hb in self._heartbeats.values())

    def last_frame(self) -> Frame | None:
        """The most recent frame (for warm-up runs of model updates)."""
        return self._last_frame

    def swap(self, bundle: ModelBundle, timeout: float = 30.0) -> bool:
        """Swap in ``bundle`` between two frames; True once the inference thread took it.

        No frame is dropped: frames already preprocessed for the old model are prepared again
        for the new one, and every result after the swap names the new model.
        """
        done = threading.Event()
        with self._swap_lock:
            self._pending_swap = (bundle, done)
        if not any(t.is_alive() for t in self._threads):
            self._apply_swap()
        return done.wait(timeout)

    def _apply_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending_swap = self._pending_swap, None
        if pending is None:
            return
        bundle, done = pending
        self._hook_targets(bundle)
        if self._trial is not None:
            self._trial.abort()
        old, self._bundle = self._bundle, bundle
        self._trial = _new_trial(bundle, self._trial_slot, getattr(bundle, "thread_choice", None))
        self._settled = None
        self._hook_targets(old, hook=False)
        logger.info("pipeline %s: now serving %s v%d (%s)", self.name, bundle.ref.name,
                    bundle.ref.version, bundle.ref.sha256[:12])
        done.set()
        del old  # the post thread may still decode with it; the interpreter goes with it

    def _hook_targets(self, bundle: ModelBundle, hook: bool = True) -> None:
        """Have ``bundle``'s runtime report target changes here (runtimes with targets)."""
        if hasattr(bundle.runtime, "on_change"):
            bundle.runtime.on_change = self._target_changed if hook else None
        if hasattr(bundle.runtime, "on_wait"):
            bundle.runtime.on_wait = self._infer_waiting if hook else None

    def _infer_waiting(self) -> None:
        """The runtime waits on a delegate within its deadline: the inference stage is alive."""
        self._heartbeats["infer"] = time.monotonic()

    def _target_changed(self, change: TargetChange) -> None:
        """The runtime moved to another target (on the inference thread, between frames):
        count it and publish a ``target_changed`` event through the privacy policy."""
        with self.stats.lock:
            self.target_changes += 1
        if self.on_target_change is not None:
            self.on_target_change(self.name, change)
        msg = self._policy.target_event(change)
        if msg is not None:
            self._send(msg)

    def targets(self) -> list[dict[str, Any]]:
        """Each execution target's state, best first (empty for runtimes without targets)."""
        getter = getattr(self._bundle.runtime, "targets", None)
        return list(getter()) if getter is not None else []

    def status(self) -> dict[str, Any]:
        """The pipeline's part of the retained status message and stats."""
        info = self._bundle.runtime.info
        targets = self.targets()
        out = {
            "name": self.name,
            "state": self.state,
            "source": self.cfg.source.type,
            "source_error": self.source_error,
            "model": {"name": self._bundle.ref.name, "version": self._bundle.ref.version,
                      "sha256": self._bundle.ref.sha256},
            "runtime": {"backend": info.backend, "version": info.backend_version,
                        "delegate": info.delegate, "threads": info.threads,
                        "fallback": info.fallback_reason,
                        **_thread_choice(self._bundle, self._trial_outcome())},
            "target": getattr(self._bundle.runtime, "active", None),
            "targets": {t["name"]: t["state"] for t in targets},
            "target_changes": self.target_changes,
        }
        snap = self.stats.snapshot()
        snap["dropped"] += self.source_dropped
        snap["bad_lines"] = self.source_bad_lines
        # class ids the label file does not name (published as the id; see decoders.labels)
        snap["unlabeled"] = int(getattr(getattr(self._bundle.decoder, "name", None),
                                        "unlabeled", 0))
        out.update(snap)
        if self._health is not None:
            out["camera_health"] = self._health.status()
        out["thermal_factor"] = round(self.thermal_factor, 3)
        out["thermal_skipped"] = self._thinner.skipped
        return out

    @property
    def health_state(self) -> str | None:
        """The camera-health state (None without a monitor)."""
        return None if self._health is None else str(self._health.state)

    # ------------------------------------------------------------------ threads

    def _observe_stage(self, stage: str, seconds: float) -> None:
        prev = self.stage_ms.get(stage)
        ms = seconds * 1000.0
        self.stage_ms[stage] = ms if prev is None else 0.9 * prev + 0.1 * ms
        if self._observe is not None:
            self._observe(self.name, stage, seconds)

    def _capture_loop(self) -> None:
        _lower_thread_priority(self.tuning.aux_nice)
        source: Source | None = None
        backoff = 0.5
        live = False
        cycle_start = time.perf_counter()
        try:
            while not self._stop.is_set():
                self._heartbeats["capture"] = time.monotonic()
                if source is None:
                    try:
                        source = self._source_factory(self.cfg.source)
                        if (self._gate is not None or self.tuning.model_scale_decode) \
                                and hasattr(source, "defer_decode"):
                            # JPEG/MJPEG frames arrive undecoded: the gate measures a reduced
                            # decode, the model gets one at its own scale
                            source.defer_decode = True
                        source.open()
                        live = bool(source.live)
                        self.state, self.source_error, backoff = "running", None, 0.5
                        self._source_changed(True, live)
                    except SourceError as exc:
                        source = self._close_quietly(source)
                        self._source_failed(str(exc), backoff)
                        backoff = min(backoff * 2, 30.0)
                        continue
                t0 = time.perf_counter()
                try:
                    frame = source.read(POLL_S)
                except EOFError:
                    self.state = "finished"
                    logger.info("pipeline %s: source ended", self.name)
                    break
                except SourceError as exc:
                    source = self._close_quietly(source)
                    self._source_failed(str(exc), backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                self.source_dropped = int(source.dropped)
                self.source_bad_lines = int(source.bad_lines)
                if frame is None:
                    continue
                t1 = time.perf_counter()
                self.arrivals.arrived(t1)
                if self._thermal is not None:
                    self.thermal_factor = factor = self._thermal()
                    if live and not self._thinner.admit(factor):
                        continue  # cooling down: this frame is skipped before any work
                self._observe_stage("capture", t1 - t0)
                self._handle_frame(frame, live, t1)
                if self._thermal is not None and not live:
                    # a file source loses no frame: wait so its rate falls to ``factor``
                    busy = time.perf_counter() - cycle_start  # read and hand-over, no pause
                    pause = FrameThinner.pause(self.thermal_factor, busy)
                    if pause > 0:
                        self._stop.wait(min(pause, MAX_THERMAL_PAUSE_S))
                    cycle_start = time.perf_counter()
        except Exception:
            logger.exception("pipeline %s: capture thread failed", self.name)
            self.state = "error"
        finally:
            self._close_quietly(source)
            self._capture_done.set()
            self._put_end(self._q_in, "infer")

    def _put_end(self, q: queue.Queue[_Item | None], consumer: str) -> None:
        """Hand the end marker downstream (the consumer drains, so this does not block long)."""
        while True:
            try:
                q.put(_END, timeout=POLL_S)
                return
            except queue.Full:
                alive = [t for t in self._threads if t.name == f"{self.name}-{consumer}"]
                if not any(t.is_alive() for t in alive):
                    return

    def _source_failed(self, message: str, backoff: float) -> None:
        message = scrub_text(message)  # retained status and logs: no credentials from a URL
        if self._gate is not None:
            self._gate.reset()  # the next frame after a reopen starts a new background
        if self.source_error != message:
            logger.warning("pipeline %s: source failed: %s (retrying in %.1fs)",
                           self.name, message, backoff)
        self.state, self.source_error = "reconnecting", message
        self._source_changed(False, False)
        # retrying is progress, not a stall: the backoff (up to 30 s) must not age the
        # heartbeat past stall_timeout_s, or the watchdog restarts the daemon over a camera
        # that is merely down
        deadline = time.monotonic() + backoff
        while not self._stop.is_set():
            now = time.monotonic()
            self._heartbeats["capture"] = now
            if now >= deadline:
                break
            self._stop.wait(min(POLL_S, deadline - now))

    def _source_changed(self, up: bool, live: bool) -> None:
        """source_up/source_down events (camera health on) when the source's state flips."""
        health = self._health
        if health is None or self._source_up is up:
            return
        if up:
            health.live = live
        first_up = up and self._source_up is None
        self._source_up = up
        if not first_up:  # the first open is the normal start, not news
            self._send_health([health.source_event(up, time.time())])

    def _send_health(self, events: list[HealthEvent]) -> None:
        for ev in events:
            logger.info("pipeline %s: %s", self.name, ev.event)
            self._send(self._policy.health_event(ev))

    @staticmethod
    def _close_quietly(source: Source | None) -> None:
        if source is not None:
            try:
                source.close()
            except Exception:  # a broken device must not stop the pipeline
                logger.warning("source close failed", exc_info=True)
        return None

    def _handle_frame(self, frame: Frame, live: bool, t_capture: float) -> None:
        with self.stats.lock:
            self.stats.frames += 1
        gate = self._gate
        moving = True
        if frame.encoded is not None and frame.image is None:
            decided = self._decode_when_needed(frame)
            if decided is None:
                return
            frame, moving = decided
            gate = None  # already asked, on the reduced decode
        if frame.image is not None:
            image, problem = conform_image(frame.image)
            if image is None:
                self._bad_frame(str(problem))
                return
            if image is not frame.image:
                frame = replace(frame, image=image)
        if gate is not None and frame.image is not None:
            moving = gate.check(frame.image, frame.ts)
        health = self._health
        if health is not None and frame.image is not None:
            now = time.monotonic()
            # camera health always measures the full frame (its sharpness and similarity
            # figures depend on the scale): decoded in full here when the check is due
            full: np.ndarray | None = frame.image
            if frame.encoded is not None and health.due(now):
                full = frame.encoded.decode()
            if full is not None:
                small = None if self._gate is None else self._gate.small
                events = health.check(full, now, frame.ts, small)
                if events:
                    self._send_health(events)
        # the tracker needs frames while it confirms that objects left (``pending``)
        pending = self._tracker is not None and bool(self._tracker.pending)
        if not moving and not pending:
            with self.stats.lock:
                self.stats.gated += 1
            return
        if frame.image is not None:
            masked = self._policy.mask_frame(frame.image)
            if masked is not frame.image:
                frame = replace(frame, image=masked)
        self._last_frame = frame
        t0 = time.perf_counter()
        bundle = self._bundle
        with self._prep_lock:
            inputs, transform = bundle.prepare(frame)
        self._observe_stage("preprocess", time.perf_counter() - t0)
        item = _Item(frame, inputs, transform, bundle, t_capture)
        if live:
            # newest wins: whatever still waits is older than this frame (queue kept 1 deep,
            # so the model always starts on the freshest frame)
            while True:
                try:
                    stale = self._q_in.get_nowait()
                except queue.Empty:
                    break
                if stale is _END:  # never happens: only this thread puts the marker
                    continue
                with self.stats.lock:
                    self.stats.dropped += 1
            try:
                self._q_in.put_nowait(item)
            except queue.Full:  # only this thread puts: cannot happen after draining
                with self.stats.lock:
                    self.stats.dropped += 1
            return
        while not self._stop.is_set():
            try:
                self._q_in.put(item, timeout=POLL_S)
                return
            except queue.Full:
                self._heartbeats["capture"] = time.monotonic()

    def _decode_when_needed(self, frame: Frame) -> tuple[Frame, bool] | None:
        """An encoded frame: the gate decides on a reduced decode, and the frame is decoded
        only when it is needed (the gate opens, the tracker waits for frames, a camera health
        check is due). Returns ``(frame with image, moving)``, or None when the frame stops
        here (gated, or corrupt).

        The decode is at the model's scale (:meth:`_model_scale_image`) where nothing needs
        the full frame; the frame then keeps ``encoded`` (its full size for the result)."""
        encoded = frame.encoded
        assert encoded is not None
        gate = self._gate
        moving = True
        if gate is not None:
            small = encoded.reduced(gate.cfg.width)
            if small is None:
                self._bad_frame("an encoded frame cannot be decoded")
                return None
            moving = gate.check(small, frame.ts)
            pending = self._tracker is not None and bool(self._tracker.pending)
            health_due = self._health is not None and self._health.due(time.monotonic())
            if not moving and not pending and not health_due:
                with self.stats.lock:
                    self.stats.gated += 1
                return None
        image = self._model_scale_image(encoded)
        if image is None:
            self._bad_frame("an encoded frame cannot be decoded")
            return None
        scaled = image.shape[:2] != (encoded.height, encoded.width)
        return replace(frame, image=image, encoded=encoded if scaled else None), moving

    def _model_scale_image(self, encoded: EncodedPixels) -> np.ndarray | None:
        """The frame decoded as small as the model's input allows (JPEG DCT scaling, both
        sides at least the input's), or in full when something needs the full frame.

        Full: snapshots (``publish_images``: the face redaction runs on the full frame), a
        live viewer watching, a shadow candidate (its input may be larger), a model without
        an image preprocessor, or ``Tuning.model_scale_decode`` off. The privacy masks are
        applied afterwards to whatever is decoded (normalised polygons), so the model never
        sees a masked pixel either way; camera health decodes in full when its check is due.
        """
        pre = self._bundle.preprocessor
        view = self.view
        if (pre is None or not self.tuning.model_scale_decode or self.shadow is not None
                or self.cfg.privacy.publish_images or (view is not None and view.wanted())):
            return encoded.decode()
        return encoded.at_least(pre.width, pre.height)

    def _bad_frame(self, problem: str) -> None:
        with self.stats.lock:
            self.stats.bad_frames += 1
        if problem != self._last_bad_frame:  # once per kind of problem in a row
            logger.warning("pipeline %s: skipping a frame: %s", self.name, problem)
            self._last_bad_frame = problem

    def _infer_loop(self) -> None:
        try:
            while True:
                self._heartbeats["infer"] = time.monotonic()
                if self._pending_swap is not None:
                    self._apply_swap()
                if self._retry_budget is not None:
                    self._apply_retry()
                try:
                    item = self._q_in.get(timeout=POLL_S)
                except queue.Empty:
                    if self._capture_done.is_set() and self._q_in.empty():
                        break
                    if self._trial is not None:
                        self._trial.overdue()
                    continue
                if item is _END:
                    break
                if self._pending_swap is not None:  # a swap asked for while we waited
                    self._apply_swap()
                self._infer_one(item)
        except Exception:
            logger.exception("pipeline %s: inference thread failed", self.name)
            self.state = "error"
        finally:
            if self._trial is not None:
                self._trial.abort()
            self._infer_done.set()
            self._put_end(self._q_out, "post")

    def _infer_one(self, item: _Item) -> None:
        bundle = self._bundle
        if item.bundle is not bundle:  # preprocessed for the model swapped out
            with self._prep_lock:
                item.inputs, item.transform = bundle.prepare(item.frame)
            item.bundle = bundle
        t0 = time.perf_counter()
        try:
            item.outputs = bundle.runtime.infer(item.inputs)
        except Exception:
            logger.exception("pipeline %s: inference failed", self.name)
            with self.stats.lock:
                self.stats.errors += 1
            if self.on_inference is not None:
                self.on_inference(False, False, bundle.ref.sha256)
            return
        dt = time.perf_counter() - t0
        item.inference_ms = dt * 1000
        shadow = self.shadow
        # the preprocess buffer is free again: keep no reference to it (a shadow candidate
        # with the same inputs gets a copy)
        item.inputs = ([np.array(x, copy=True) for x in item.inputs]
                       if shadow is not None and shadow.share_inputs else [])
        self._observe_stage("invoke", dt)
        self._q_out.put(item)
        trial = self._trial
        if trial is not None and trial.active:
            trial.frame_done()  # between frames: it may switch the serving interpreter

    def _post_loop(self) -> None:
        _lower_thread_priority(self.tuning.aux_nice)
        while True:
            self._heartbeats["post"] = time.monotonic()
            try:
                item = self._q_out.get(timeout=POLL_S)
            except queue.Empty:
                if self._infer_done.is_set() and self._q_out.empty():
                    break
                continue
            if item is _END:
                break
            try:
                self._post(item)
            except Exception:  # one bad frame must not stop the pipeline
                logger.exception("pipeline %s: post-processing failed", self.name)
                with self.stats.lock:
                    self.stats.errors += 1
        if self.state not in {"finished", "error"}:
            self.state = "stopped"

    def _post(self, item: _Item) -> None:
        assert item.outputs is not None
        t0 = time.perf_counter()
        inference = item.bundle.decode(item.outputs, item.transform)
        t1 = time.perf_counter()
        self._observe_stage("decode", t1 - t0)
        finite = outputs_finite(item.outputs)
        if self.on_inference is not None:  # the updater's watch counts per model
            self.on_inference(True, finite, item.bundle.ref.sha256)
        if not finite:
            # a broken model's "nothing found" is not a result: drop it and count the error
            with self.stats.lock:
                self.stats.errors += 1
            return
        shadow = self.shadow
        if shadow is not None:
            # the same preprocessed inputs (when the infer thread kept a copy); idle: no frame
            # is waiting for the active model; headroom: until the next frame is due
            shadow.offer(item.frame, item.inputs or None, item.transform, inference,
                         item.inference_ms, idle=self._q_in.empty(),
                         headroom_s=self.arrivals.headroom_s(time.perf_counter()))
        events: list[TrackEvent] = []
        if self._tracker is not None:
            dets, events = self._tracker.update(inference.detections, item.frame.ts)
            if self._zones is not None:
                left = [e.track_id for e in events if e.event == "leave"]
                dets, zone_events = self._zones.update(dets, item.frame.ts, left)
                # enter, then zone events (a zone_leave before the track's leave), then leave
                events = ([e for e in events if e.event == "enter"] + zone_events
                          + [e for e in events if e.event != "enter"])
            inference = replace(inference, detections=tuple(dets))
        frame = item.frame
        result = Result(
            pipeline=self.name, frame_index=frame.index, ts=frame.ts, width=frame.width,
            height=frame.height, model=item.bundle.ref, inference_ms=round(item.inference_ms, 2),
            inference=inference,
            image=frame.image if self.cfg.privacy.publish_images else None,
            zone_names=self._zones.names if self._zones is not None else (),
        )
        view = self.view
        if view is not None and frame.image is not None and view.wanted():
            view.offer(frame, result)
        with self.stats.lock:
            self.stats.inferred += 1
            self.stats.inference_ms.append(item.inference_ms)
            self.stats.done_times.append(time.monotonic())
        if self._should_publish(result):
            t2 = time.perf_counter()
            msg = self._policy.result(result)
            t3 = time.perf_counter()
            self._observe_stage("policy", t3 - t2)
            if self._send(msg):
                with self.stats.lock:
                    self.stats.published += 1
            self._observe_stage("publish", time.perf_counter() - t3)
            if self.cfg.privacy.publish_images:
                snap = self._policy.snapshot(result)
                if snap is not None:
                    self._send(snap)
        for event in events:
            ev_msg = self._policy.event(event)
            if ev_msg is not None:
                self._send(ev_msg)

    def _should_publish(self, result: Result) -> bool:
        """every_frame: always; on_change: when the detected set changes, or on the heartbeat.

        The set is the label counts, the top class (classifiers) and the track ids (with
        tracking on, a new object of an already present label is a change).
        """
        if self.cfg.publish == "every_frame":
            return True
        inf = result.inference
        counts: dict[str, int] = {}
        for d in inf.detections:
            counts[d.label] = counts.get(d.label, 0) + 1
        key: tuple[object, ...] = (
            tuple(sorted(counts.items())),
            tuple(c.label for c in inf.classes[:1]) if inf.classes else (),
            tuple(sorted(d.track_id for d in inf.detections if d.track_id is not None)),
            tuple(sorted((z, d.label) for d in inf.detections for z in d.zones)),
        )
        now = time.monotonic()
        if key != self._last_key or now - self._last_publish >= self.cfg.heartbeat_s:
            self._last_key, self._last_publish = key, now
            return True
        return False
