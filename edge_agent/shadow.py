"""Shadow evaluation: a candidate model runs beside the active one on the device's own frames,
and only aggregate agreement figures leave the device.

:class:`Agreement` compares the candidate's decoded output with the active model's on the
same frame and keeps running totals: for detectors precision and recall of the candidate
against the active model at IoU 0.5 per label, the mean IoU of matched boxes and count
differences; for classifiers top-1 and top-5 agreement; for regression and sensor models mean
and max absolute difference; latency p50/p95 of both models; failures and non-finite outputs.
Nothing of an individual frame is kept: the figures are sums and a bounded sample of
latencies.

:class:`ShadowRunner` runs the candidate on its own thread (lowered priority, its own
interpreter) on a sample of frames, every Nth or only when the pipeline is idle, through a
newest-frame slot: the pipeline thread hands a frame over in O(1) and never waits; a frame
that arrives while the candidate is still busy replaces the one waiting and is counted
dropped.

:class:`ShadowGate` is a manifest's ``shadow: {frames, min_recall, min_precision,
max_latency_ratio}``: whether the figures allow the device to promote the candidate itself.

This module is part of the wiring layer (it runs bundles); it publishes nothing itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.bundle import ModelBundle, outputs_finite
from edge_agent.errors import UpdateError
from edge_agent.types import Detection, Frame, Inference, Transform

logger = logging.getLogger(__name__)

IOU_MATCH = 0.5
LATENCY_SAMPLES = 2048  # per model: the newest latencies p50/p95 are taken over


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes (0 for empty ones)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(active: Sequence[Detection], candidate: Sequence[Detection],
                     threshold: float = IOU_MATCH) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches ``(active index, candidate index, iou)`` of the same label
    with IoU >= ``threshold``, the candidate's most confident boxes first."""
    taken: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for ci in sorted(range(len(candidate)), key=lambda i: -candidate[i].score):
        c = candidate[ci]
        best, best_iou = -1, threshold
        for ai, a in enumerate(active):
            if ai in taken or a.label != c.label:
                continue
            v = iou(a.box, c.box)
            if v >= best_iou:
                best, best_iou = ai, v
        if best >= 0:
            taken.add(best)
            matches.append((best, ci, best_iou))
    return matches


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 3) if values else None


class Agreement:
    """Running agreement figures of a candidate against the active model (thread-safe)."""

    def __init__(self, iou_threshold: float = IOU_MATCH) -> None:
        self.iou_threshold = iou_threshold
        self._lock = threading.Lock()
        self.frames = 0  # frames both models produced a usable output for
        self.failures = 0  # candidate invoke or decode failed
        self.non_finite = 0  # candidate outputs with NaN or infinity
        self._tp: dict[str, int] = {}
        self._active_n: dict[str, int] = {}
        self._cand_n: dict[str, int] = {}
        self._iou_sum = 0.0
        self._abs_count_diff = 0
        self._count_diff = 0
        self._cls_frames = 0
        self._top1 = 0
        self._top5 = 0
        self._val_frames = 0
        self._val_sum = 0.0
        self._val_n = 0
        self._val_max = 0.0
        self._lat_active: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._lat_cand: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def add_failure(self, non_finite: bool = False) -> None:
        """Count a candidate run that failed (or gave non-finite outputs)."""
        with self._lock:
            if non_finite:
                self.non_finite += 1
            else:
                self.failures += 1

    def add(self, active: Inference, candidate: Inference, active_ms: float,
            candidate_ms: float) -> None:
        """Compare one frame's decoded outputs of both models."""
        matches = match_detections(active.detections, candidate.detections,
                                   self.iou_threshold)
        with self._lock:
            self.frames += 1
            self._lat_active.append(active_ms)
            self._lat_cand.append(candidate_ms)
            for d in active.detections:
                self._active_n[d.label] = self._active_n.get(d.label, 0) + 1
            for d in candidate.detections:
                self._cand_n[d.label] = self._cand_n.get(d.label, 0) + 1
            for ai, _ci, v in matches:
                label = active.detections[ai].label
                self._tp[label] = self._tp.get(label, 0) + 1
                self._iou_sum += v
            diff = len(candidate.detections) - len(active.detections)
            self._count_diff += diff
            self._abs_count_diff += abs(diff)
            if active.classes is not None and candidate.classes is not None:
                self._cls_frames += 1
                a = sorted(active.classes, key=lambda c: -c.score)
                c = sorted(candidate.classes, key=lambda c: -c.score)
                if a and c and a[0].class_id == c[0].class_id:
                    self._top1 += 1
                if a and a[0].class_id in {x.class_id for x in c[:5]}:
                    self._top5 += 1
            if active.values is not None and candidate.values is not None:
                self._val_frames += 1
                av = np.asarray(active.values, np.float64)
                cv = np.asarray(candidate.values, np.float64)
                if av.shape != cv.shape:
                    self.failures += 1
                elif av.size:
                    absdiff = np.abs(av - cv)
                    self._val_sum += float(absdiff.sum())
                    self._val_n += int(absdiff.size)
                    self._val_max = max(self._val_max, float(absdiff.max()))

    _SCALARS = ("frames", "failures", "non_finite", "_iou_sum", "_abs_count_diff",
                "_count_diff", "_cls_frames", "_top1", "_top5", "_val_frames", "_val_sum",
                "_val_n", "_val_max")

    def state(self) -> dict[str, Any]:
        """The running totals as a JSON-able dict (for :meth:`restore` after a restart)."""
        with self._lock:
            return {**{k.lstrip("_"): getattr(self, k) for k in self._SCALARS},
                    "tp": dict(self._tp), "active_n": dict(self._active_n),
                    "cand_n": dict(self._cand_n),
                    "lat_active": list(self._lat_active), "lat_cand": list(self._lat_cand)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state`'s totals.

        Raises:
            ValueError: ``state`` is not such a dict.
        """
        try:
            scalars = {k: type(getattr(self, k))(state[k.lstrip("_")]) for k in self._SCALARS}
            counts = {k: {str(lab): int(n) for lab, n in dict(state[k]).items()}
                      for k in ("tp", "active_n", "cand_n")}
            lats = {k: [float(v) for v in state[k]] for k in ("lat_active", "lat_cand")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"saved shadow figures are not usable: {exc!r}") from None
        with self._lock:
            for k, v in scalars.items():
                setattr(self, k, v)
            self._tp, self._active_n, self._cand_n = (counts["tp"], counts["active_n"],
                                                      counts["cand_n"])
            self._lat_active.clear()
            self._lat_active.extend(lats["lat_active"])
            self._lat_cand.clear()
            self._lat_cand.extend(lats["lat_cand"])

    def figures(self) -> dict[str, Any]:
        """The aggregate figures (a JSON-able dict; nothing of an individual frame)."""
        with self._lock:
            tp = sum(self._tp.values())
            n_a, n_c = sum(self._active_n.values()), sum(self._cand_n.values())
            out: dict[str, Any] = {
                "frames": self.frames, "failures": self.failures,
                "non_finite": self.non_finite,
                "latency_ms": {
                    "active": {"p50": _percentile(self._lat_active, 50),
                               "p95": _percentile(self._lat_active, 95)},
                    "candidate": {"p50": _percentile(self._lat_cand, 50),
                                  "p95": _percentile(self._lat_cand, 95)}},
            }
            p50a = out["latency_ms"]["active"]["p50"]
            p50c = out["latency_ms"]["candidate"]["p50"]
            out["latency_ratio"] = round(p50c / p50a, 3) if p50a and p50c is not None else None
            if n_a or n_c:
                labels = sorted(set(self._active_n) | set(self._cand_n))
                out["detection"] = {
                    "iou": self.iou_threshold,
                    "precision": _ratio(tp, n_c), "recall": _ratio(tp, n_a),
                    "mean_iou": round(self._iou_sum / tp, 4) if tp else None,
                    "active_count": n_a, "candidate_count": n_c,
                    "mean_count_diff": _ratio(self._count_diff, self.frames),
                    "mean_abs_count_diff": _ratio(self._abs_count_diff, self.frames),
                    "labels": {lab: {"precision": _ratio(self._tp.get(lab, 0),
                                                         self._cand_n.get(lab, 0)),
                                     "recall": _ratio(self._tp.get(lab, 0),
                                                      self._active_n.get(lab, 0)),
                                     "active": self._active_n.get(lab, 0),
                                     "candidate": self._cand_n.get(lab, 0)}
                               for lab in labels},
                }
            elif self.frames and not self._cls_frames and not self._val_frames:
                # detectors that agree on "nothing here" on every frame
                out["detection"] = {"iou": self.iou_threshold, "precision": None,
                                    "recall": None, "mean_iou": None, "active_count": 0,
                                    "candidate_count": 0, "mean_count_diff": 0.0,
                                    "mean_abs_count_diff": 0.0, "labels": {}}
            if self._cls_frames:
                out["classification"] = {"frames": self._cls_frames,
                                         "top1": _ratio(self._top1, self._cls_frames),
                                         "top5": _ratio(self._top5, self._cls_frames)}
            if self._val_frames:
                out["values"] = {"frames": self._val_frames,
                                 "mean_abs_diff": (round(self._val_sum / self._val_n, 6)
                                                   if self._val_n else None),
                                 "max_abs_diff": round(self._val_max, 6)}
            return out


@dataclass(frozen=True)
class ShadowGate:
    """When a device may promote a shadowed candidate by itself (a manifest's ``shadow``).

    Attributes:
        frames: compared frames needed before the gate is decided.
        min_recall: lowest recall of the candidate against the active model (detectors), or
            top-1 agreement (classifiers).
        min_precision: lowest precision (detectors), or top-1 agreement (classifiers).
        max_latency_ratio: highest candidate p50 latency / active p50 latency.
    """

    frames: int
    min_recall: float | None = None
    min_precision: float | None = None
    max_latency_ratio: float | None = None

    @classmethod
    def parse(cls, raw: object, where: str = "manifest shadow") -> ShadowGate:
        """Read a manifest's ``shadow`` object.

        Raises:
            UpdateError: what is wrong and where.
        """
        if not isinstance(raw, Mapping):
            raise UpdateError(f"{where}: must be an object with frames (and min_recall, "
                              "min_precision, max_latency_ratio)")
        unknown = sorted(set(raw) - {"frames", "min_recall", "min_precision",
                                     "max_latency_ratio"})
        if unknown:
            raise UpdateError(f"{where}: unknown key(s) {', '.join(unknown)}")
        frames = raw.get("frames")
        if not isinstance(frames, int) or isinstance(frames, bool) or not 1 <= frames <= 10**7:
            raise UpdateError(f"{where}.frames: must be an integer 1..10000000, got {frames!r}")
        vals: dict[str, float | None] = {}
        for key, hi in (("min_recall", 1.0), ("min_precision", 1.0),
                        ("max_latency_ratio", 1000.0)):
            v = raw.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or not 0 <= v <= hi):
                raise UpdateError(f"{where}.{key}: must be a number 0..{hi:g}, got {v!r}")
            vals[key] = None if v is None else float(v)
        return cls(frames, vals["min_recall"], vals["min_precision"],
                   vals["max_latency_ratio"])

    def verdict(self, figures: Mapping[str, Any]) -> tuple[str, str | None]:
        """``("pending", None)`` before ``frames`` compared frames, then ``("pass", None)``
        or ``("fail", reason)``."""
        if int(figures.get("frames", 0)) < self.frames:
            return "pending", None
        problems: list[str] = []
        det = figures.get("detection")
        cls = figures.get("classification")
        for key, floor in (("recall", self.min_recall), ("precision", self.min_precision)):
            if floor is None:
                continue
            value = det.get(key) if det else (cls.get("top1") if cls else None)
            if value is None and det is not None and not det.get("active_count") \
                    and not det.get("candidate_count"):
                continue  # both saw nothing on every frame: nothing to disagree about
            if value is None or value < floor:
                problems.append(f"{key} {value} < {floor}")
        if self.max_latency_ratio is not None:
            ratio = figures.get("latency_ratio")
            if ratio is None or ratio > self.max_latency_ratio:
                problems.append(f"latency ratio {ratio} > {self.max_latency_ratio}")
        n_bad = int(figures.get("failures", 0)) + int(figures.get("non_finite", 0))
        if n_bad:
            problems.append(f"{n_bad} failed or non-finite candidate runs")
        if problems:
            return "fail", "shadow gate failed: " + "; ".join(problems)
        return "pass", None


def _same_input(a: ModelBundle, b: ModelBundle) -> bool:
    sa, sb = a.runtime.signature.inputs, b.runtime.signature.inputs
    return (len(sa) == len(sb) and all(tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype
                                       for x, y in zip(sa, sb, strict=True))
            and (a.preprocessor is None) == (b.preprocessor is None))


@dataclass
class _Job:
    frame: Frame
    inputs: list[np.ndarray] | None  # the active model's preprocessed inputs (owned copies)
    transform: Transform
    active: Inference
    active_ms: float


LOAD_TIMEOUT_S = 120.0


class ShadowRunner:
    """Runs a candidate bundle beside the active model on sampled frames.

    Args:
        pipeline: the pipeline's name (logs).
        candidate: the candidate's own bundle, or a callable that loads it. A callable is
            called on the runner's thread, after its priority is lowered, so the
            interpreter's worker threads inherit that priority. Closed by :meth:`stop`.
        active: the active bundle when shadowing starts (to know whether the preprocessed
            inputs can be shared: same input tensors and both image models).
        every: run on every Nth offered frame (1: every frame the slot can take).
        when_idle: run only in the pipeline's idle time (see
            :mod:`edge_agent.shadow_headroom`): no frame waiting, the candidate not busy, and
            the next frame not due before the candidate's run would end; ``every`` still
            applies to the frames that qualify.
        gate: the manifest's gate, or None (then only an operator promotes).
        on_figures: called with the figures after each compared frame, at most every
            ``report_s`` seconds, and once at stop.
        on_verdict: called once with ``("pass" | "fail", reason)`` when the gate is decided.
        on_checkpoint: called with :meth:`state` whenever figures are reported and at stop
            (the updater saves it, so the shadow resumes after a restart).
        resume: a :meth:`state` to continue from (the totals and counters of a run before a
            restart).
    """

    def __init__(self, pipeline: str,
                 candidate: ModelBundle | Callable[[], ModelBundle], active: ModelBundle, *,
                 every: int = 5, when_idle: bool = False, gate: ShadowGate | None = None,
                 on_figures: Callable[[dict[str, Any]], None] | None = None,
                 on_verdict: Callable[[str, str | None], None] | None = None,
                 report_s: float = 10.0,
                 on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
                 resume: Mapping[str, Any] | None = None) -> None:
        from edge_agent.shadow_headroom import RunBudget

        if every < 1:
            raise ValueError("every must be >= 1")
        self.pipeline = pipeline
        if isinstance(candidate, ModelBundle):
            self._candidate: ModelBundle | None = candidate
            self._load: Callable[[], ModelBundle] | None = None
        else:
            self._candidate, self._load = None, candidate
        self._active = active
        self.share_inputs = (self._candidate is not None
                             and _same_input(active, self._candidate))
        self.every = every
        self.when_idle = when_idle
        self.gate = gate
        self.on_figures = on_figures
        self.on_verdict = on_verdict
        self.on_checkpoint = on_checkpoint
        self.report_s = report_s
        self.agreement = Agreement()
        self.budget = RunBudget()
        self.priority = "normal"
        self.offered = 0
        self.sampled = 0
        self.dropped = 0  # sampled frames replaced in the slot before the candidate took them
        self.skipped_busy = 0  # when_idle: frames offered while the pipeline had no headroom
        self.verdict: tuple[str, str | None] | None = None
        if resume is not None:
            self._resume(resume)
        self._slot: _Job | None = None
        self._running = False  # the worker is comparing a frame
        self._cond = threading.Condition()
        self._stop = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._last_report = 0.0
        self._thread = threading.Thread(target=self._run, name=f"shadow-{pipeline}",
                                        daemon=True)

    @property
    def candidate(self) -> ModelBundle:
        """The candidate's bundle (loaded by :meth:`start`)."""
        if self._candidate is None:
            raise RuntimeError("the shadow candidate is not loaded yet")
        return self._candidate

    def start(self) -> None:
        """Start the worker; it loads the candidate (if given a loader) and, ``when idle``,
        measures one run; returns when that is done.

        Raises:
            UpdateError: the candidate could not be loaded (or not within 120 s).
        """
        self._thread.start()
        if not self._ready.wait(LOAD_TIMEOUT_S):
            self.stop(0.1)
            raise UpdateError(f"the shadow candidate did not load within {LOAD_TIMEOUT_S:g} s "
                              "(the CPU has no headroom for it)")
        if self._load_error is not None:
            self._thread.join(5.0)
            raise UpdateError(f"the shadow candidate did not load: {self._load_error}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker, report the final figures and close the candidate's interpreter."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._report(force=True)
        if self._candidate is not None:
            self._candidate.close()

    def offer(self, frame: Frame, inputs: Sequence[np.ndarray] | None, transform: Transform,
              active: Inference, active_ms: float, idle: bool = True,
              headroom_s: float | None = None) -> None:
        """Hand one frame of the active model over (pipeline thread; never waits).

        Args:
            inputs: the active model's preprocessed inputs, owned by the caller's copy (kept
                without copying; None: the candidate prepares the frame itself).
            idle: no frame is waiting for the active model.
            headroom_s: seconds until the source's next frame is due (None: unknown).
        """
        self.offered += 1
        if self.when_idle and not (idle and not self._running and self._slot is None
                                   and self.budget.fits(headroom_s)):
            self.skipped_busy += 1
            return
        if self.offered % self.every:
            return
        self.sampled += 1
        shared = list(inputs) if self.share_inputs and inputs else None
        job = _Job(frame, shared, transform, active, active_ms)
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = job
            self._cond.notify()

    def counters(self) -> dict[str, int]:
        """How many frames were offered, sampled, dropped from the slot, skipped while busy."""
        return {"offered": self.offered, "sampled": self.sampled, "dropped": self.dropped,
                "skipped_busy": self.skipped_busy}

    def figures(self) -> dict[str, Any]:
        """The agreement figures with the sampling counters."""
        return {**self.agreement.figures(), "sampling": {
            "every": self.every, "when_idle": self.when_idle, **self.counters()}}

    def state(self) -> dict[str, Any]:
        """The totals and counters, JSON-able (``resume`` after a restart)."""
        return {"agreement": self.agreement.state(), "counters": self.counters()}

    def _resume(self, saved: Mapping[str, Any]) -> None:
        self.agreement.restore(saved.get("agreement") or {})
        counters = saved.get("counters") or {}
        for key in ("offered", "sampled", "dropped", "skipped_busy"):
            setattr(self, key, int(counters.get(key, 0)))

    def _run(self) -> None:
        from edge_agent.bundle import warm_up
        from edge_agent.shadow_headroom import BackgroundThread

        prio = BackgroundThread(sched_idle=self.when_idle)
        self.priority = prio.mode
        try:
            with prio.interpreter_work():
                if self._candidate is None:
                    assert self._load is not None
                    self._candidate = self._load()
                    self.share_inputs = _same_input(self._active, self._candidate)
                if self.when_idle:  # the first run (lazy set-up) is not representative
                    for _ in range(2):
                        t0, c0 = time.perf_counter(), time.thread_time()
                        warm_up(self._candidate, None)
                    self.budget.add(min(time.perf_counter() - t0, time.thread_time() - c0))
        except Exception as exc:  # a candidate that loaded in validation; report, do not run
            self._load_error = exc
            self._ready.set()
            return
        self._ready.set()
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                job, self._slot = self._slot, None
                self._running = True
            assert job is not None
            try:
                self._compare(job, prio)
            finally:
                self._running = False
            self._report()

    def _compare(self, job: _Job, prio: Any) -> None:
        b = self.candidate
        t_start, c_start = time.perf_counter(), time.thread_time()
        try:
            if job.inputs is not None:
                inputs, transform = job.inputs, job.transform
            else:
                inputs, transform = b.prepare(job.frame)
            with prio.interpreter_work():
                t0 = time.perf_counter()
                outputs = b.runtime.infer(inputs)
                ms = (time.perf_counter() - t0) * 1000
            if not outputs_finite(outputs):
                self.agreement.add_failure(non_finite=True)
                return
            inference = b.decode(outputs, transform)
        except Exception as exc:  # an untrusted candidate can make a runtime raise anything
            logger.debug("pipeline %s: shadow candidate failed: %s", self.pipeline, exc)
            self.agreement.add_failure()
            return
        finally:
            # the time the run needs with a core to itself: its CPU time when other work
            # stretched it (a SCHED_IDLE run waits while anything else runs)
            self.budget.add(min(time.perf_counter() - t_start,
                                time.thread_time() - c_start))
        self.agreement.add(job.active, inference, job.active_ms, ms)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_report >= self.report_s:
            self._last_report = now
            for callback, what in ((self.on_figures, "published"),
                                   (self.on_checkpoint, "saved")):
                if callback is None:
                    continue
                try:
                    callback(self.figures() if what == "published" else self.state())
                except Exception as exc:  # a refused publish must not stop the comparison
                    logger.warning("pipeline %s: shadow figures not %s: %s", self.pipeline,
                                   what, exc)
        if self.gate is not None and self.verdict is None:
            verdict, reason = self.gate.verdict(self.agreement.figures())
            if verdict != "pending":
                self.verdict = (verdict, reason)
                if self.on_verdict is not None:
                    self.on_verdict(verdict, reason)


def figures_of(saved: Mapping[str, Any], every: int, when_idle: bool) -> dict[str, Any]:
    """The figures of a saved :meth:`ShadowRunner.state` (an ended shadow's last report).

    Raises:
        ValueError: ``saved`` is not usable.
    """
    agreement = Agreement()
    agreement.restore(saved.get("agreement") or {})
    counters = {k: int((saved.get("counters") or {}).get(k, 0))
                for k in ("offered", "sampled", "dropped", "skipped_busy")}
    return {**agreement.figures(), "sampling": {"every": every, "when_idle": when_idle,
                                                **counters}}


__all__ = ["Agreement", "ShadowGate", "ShadowRunner", "figures_of", "iou", "match_detections"]
