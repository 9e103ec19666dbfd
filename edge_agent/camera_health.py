"""Camera health: the view blocked, moved, out of focus, too dark or frozen, and the stream down.

A few times a second (``interval_s``) the monitor measures a small grey copy of the frame
(the motion gate's when it ran, else its own, ``width`` pixels wide):

* **brightness**: mean grey level (0..255). Below ``dark_level``: ``dark``.
* **contrast**: standard deviation of the grey levels. Below ``blocked_contrast`` (a nearly
  uniform picture: a hand, tape, a cap or fog over the lens): ``blocked``.
* **sharpness**: variance of the Laplacian divided by the grey variance, i.e. the share of
  fine detail in the picture's contrast, so a darker or flatter scene keeps its value and
  only blur lowers it. ``defocused`` when it falls below ``defocus_ratio`` times the scene's
  usual (median) sharpness and below its usual low (5th percentile).
* **similarity**: normalised cross-correlation of a 40x30 copy with a slowly updated
  reference view (a running average, time constant ``reference_s``). ``moved`` when it falls
  below ``moved_similarity`` and below the scene's usual low similarity (5th percentile less
  ``moved_margin``): a scene that is always changing (a busy street, an edited clip) sets its
  own, lower bar; a still view turned elsewhere drops far below it.
* **frozen** (live sources only): the raw pixels of a strided sample of the full frame are
  identical for ``frozen_s``. A real sensor's noise makes that impossible for a working camera.

``moved`` and ``defocused`` compare with what the scene usually looks like, so they wait until
``learn_s`` of history is collected. A problem is reported when it held for ``hold_s``; the
camera is ``ok`` again after ``clear_s`` without one. One problem at a time, by priority:
frozen, dark, blocked, moved, defocused. A moved camera that stays moved is learned as the new
view after ``relearn_s`` (then ``camera_ok``: the event was the alarm).

``source_down``/``source_up`` come from the pipeline when its source fails and reopens.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

from edge_agent.config import CameraHealthConfig
from edge_agent.types import HealthEvent, HealthEventKind

PROBLEMS = ("frozen", "dark", "blocked", "moved", "defocused")
"""Camera problems by priority (the first that holds is the state)."""

REF_SIZE = (40, 30)  # (w, h) of the copy compared with the reference view
SAMPLE_STRIDE = 16  # frozen check: every 16th pixel of every 16th row of the full frame
HISTORY_S = 300.0  # the usual-behaviour window (sharpness, similarity)


@dataclass(frozen=True, slots=True)
class Measures:
    """One check's figures (see the module docstring)."""

    brightness: float
    contrast: float
    sharpness: float
    similarity: float | None  # None until there is a reference


class CameraHealthMonitor:
    """Watches one pipeline's frames; returns events when the camera's condition changes.

    Args:
        cfg: thresholds and timings.
        pipeline: the pipeline name, carried in the events.
        live: whether the source is live (frozen frames are only a problem there).

    Attributes:
        state: ``ok``, one of :data:`PROBLEMS`, or ``unknown`` before the first check.
        since: monotonic time the state began.
        last: the last check's figures.
        checks: checks made.
        cost_s: seconds spent checking, in total.
    """

    def __init__(self, cfg: CameraHealthConfig, pipeline: str, *, live: bool = True) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.live = live
        self.state = "unknown"
        self.since = 0.0
        self.last: Measures | None = None
        self.checks = 0
        self._next_check = -math.inf
        self._reference: np.ndarray | None = None  # (30, 40) float32 grey
        self._tiny = np.zeros(REF_SIZE[::-1], np.float32)  # the last check's 40x30 copy
        self._ref_t = 0.0
        self._sample: np.ndarray | None = None  # strided raw sample of the full frame
        self._sample_since = 0.0
        self._candidate: str | None = None  # a problem seen, not yet held long enough
        self._candidate_since = 0.0
        self._clear_since: float | None = None
        self.cost_s = 0.0  # time spent in checks (cost per check: cost_s / checks)
        n = max(16, int(HISTORY_S / max(cfg.interval_s, 0.05)))
        self._sharpness: deque[float] = deque(maxlen=n)
        self._similarity: deque[float] = deque(maxlen=n)
        self._history_since: float | None = None
        self._usual_cache: tuple[float, float, float] | None = None
        self._usual_next = 0

    # ------------------------------------------------------------------ measuring

    def due(self, now: float) -> bool:
        """Whether the next check is due (callers skip making a small copy otherwise)."""
        return now >= self._next_check

    def measure(self, image: np.ndarray, small: np.ndarray | None = None) -> Measures:
        """The figures of one frame; updates nothing.

        Args:
            image: the frame, (H, W, 3) uint8 BGR or (H, W) grey.
            small: an already shrunk copy of it (the motion gate's), BGR or grey.
        """
        grey = self._small_grey(image if small is None else small)
        mean, std = cv2.meanStdDev(grey)
        contrast = float(std[0, 0])
        lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=3)
        _, lap_std = cv2.meanStdDev(lap)
        sharpness = float(lap_std[0, 0]) ** 2 / max(contrast * contrast, 1.0)
        tiny = cv2.resize(grey, REF_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
        similarity = None if self._reference is None else ncc(tiny, self._reference)
        self._tiny = tiny
        return Measures(float(mean[0, 0]), contrast, sharpness, similarity)

    def _small_grey(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        h, w = image.shape[:2]
        if w > self.cfg.width:
            # the motion gate's recipe (linear shrink, 3x3 blur): ~5x cheaper than an area
            # shrink, and the same figures whether the gate's copy or this one is measured
            image = cv2.resize(image, (self.cfg.width, max(8, round(h * self.cfg.width / w))),
                               interpolation=cv2.INTER_LINEAR)
            image = cv2.GaussianBlur(image, (3, 3), 0)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        grey: np.ndarray = np.ascontiguousarray(image, dtype=np.uint8)
        return grey

    # ------------------------------------------------------------------ deciding

    def check(self, image: np.ndarray, now: float, ts: float,
              small: np.ndarray | None = None) -> list[HealthEvent]:
        """Check one frame when a check is due; the events of a changed condition.

        Args:
            image: the frame, (H, W, 3) uint8 BGR or (H, W) grey.
            now: monotonic seconds (timing of holds).
            ts: the frame's time, epoch seconds (carried in the events).
            small: the motion gate's small copy of this frame, if it made one.
        """
        if not self.due(now):
            return []
        t0 = time.perf_counter()
        self._next_check = now + self.cfg.interval_s
        self.checks += 1
        frozen = self._frozen(image, now)
        m = self.measure(image, small)
        self.last = m
        problem = "frozen" if frozen else self._problem(m, now)
        if problem is None:
            self._learn(m, now)
        events = self._transition(problem, m, now, ts)
        self.cost_s += time.perf_counter() - t0
        return events

    def _frozen(self, image: np.ndarray, now: float) -> bool:
        if not self.live or image.size == 0:
            return False
        sample = image[::SAMPLE_STRIDE, ::SAMPLE_STRIDE]
        if self._sample is not None and self._sample.shape == sample.shape and np.array_equal(
                self._sample, sample):
            return now - self._sample_since >= self.cfg.frozen_s
        self._sample = sample.copy()
        self._sample_since = now
        return False

    def _problem(self, m: Measures, now: float) -> str | None:
        cfg = self.cfg
        if m.brightness < cfg.dark_level:
            return "dark"
        if m.contrast < cfg.blocked_contrast:
            return "blocked"
        learned = (self._history_since is not None
                   and now - self._history_since >= cfg.learn_s
                   and len(self._similarity) >= 8)
        if not learned:
            return None
        sim_low, sharp_usual, sharp_low = self._usual()
        if m.similarity is not None and m.similarity < min(cfg.moved_similarity,
                                                          sim_low - cfg.moved_margin):
            if self.state == "moved" and now - self.since >= cfg.relearn_s:
                self._reference = self._tiny.copy()  # the new view is here to stay
                self._similarity.clear()
                self._usual_cache = None
                self._history_since = now
                return None
            return "moved"
        if m.sharpness < cfg.defocus_ratio * sharp_usual and m.sharpness < sharp_low:
            return "defocused"
        return None

    def _usual(self) -> tuple[float, float, float]:
        """(low similarity, median and low sharpness) of the history, recomputed every 5 s."""
        if self._usual_cache is None or self.checks >= self._usual_next:
            sim = np.fromiter(self._similarity, np.float64)
            sharp = np.fromiter(self._sharpness, np.float64)
            self._usual_cache = (float(np.percentile(sim, 5)), float(np.median(sharp)),
                                 float(np.percentile(sharp, 5)))
            self._usual_next = self.checks + max(1, round(5.0 / self.cfg.interval_s))
        return self._usual_cache

    def _learn(self, m: Measures, now: float) -> None:
        """Fold an unremarkable check into the reference view and the usual figures."""
        tiny = self._tiny
        if self._reference is None:
            self._reference = tiny.copy()
            self._ref_t = now
            self._history_since = now
        else:
            alpha = min(1.0, max(0.0, now - self._ref_t) / self.cfg.reference_s)
            cv2.accumulateWeighted(tiny, self._reference, alpha)
            self._ref_t = now
        self._sharpness.append(m.sharpness)
        if m.similarity is not None:
            self._similarity.append(m.similarity)

    def _transition(self, problem: str | None, m: Measures, now: float,
                    ts: float) -> list[HealthEvent]:
        cfg = self.cfg
        if self.state == "unknown":
            self.state, self.since = "ok", now
        if problem is None:
            self._candidate = None
            if self.state == "ok":
                return []
            if self._clear_since is None:
                self._clear_since = now
            if now - self._clear_since < cfg.clear_s:
                return []
            return self._enter("ok", m, now, ts)
        self._clear_since = None
        if problem == self.state:
            self._candidate = None
            return []
        if self._candidate != problem:
            self._candidate, self._candidate_since = problem, now
        # frozen_s already is the frozen check's hold
        if problem != "frozen" and now - self._candidate_since < cfg.hold_s:
            return []
        return self._enter(problem, m, now, ts)

    def _enter(self, state: str, m: Measures, now: float, ts: float) -> list[HealthEvent]:
        self.state, self.since = state, now
        self._candidate, self._clear_since = None, None
        return [self._event(f"camera_{state}", ts, m)]  # type: ignore[arg-type]

    def _event(self, kind: HealthEventKind, ts: float, m: Measures | None) -> HealthEvent:
        figures: tuple[tuple[str, float], ...] = ()
        if m is not None:
            figures = (("brightness", round(m.brightness, 2)), ("contrast", round(m.contrast, 2)),
                       ("sharpness", round(m.sharpness, 4)))
            if m.similarity is not None:
                figures += (("similarity", round(m.similarity, 4)),)
        return HealthEvent(pipeline=self.pipeline, ts=ts, event=kind, figures=figures)

    # ------------------------------------------------------------------ the source

    def source_event(self, up: bool, ts: float) -> HealthEvent:
        """``source_up`` or ``source_down``; a reopened source starts a new frozen check."""
        self._sample = None
        self._candidate = None
        return self._event("source_up" if up else "source_down", ts, None)

    def status(self) -> dict[str, object]:
        """The pipeline's ``camera_health`` status entry (flat)."""
        m = self.last
        out: dict[str, object] = {"state": self.state}
        if m is not None:
            out.update(brightness=round(m.brightness, 1), contrast=round(m.contrast, 1),
                       sharpness=round(m.sharpness, 4),
                       similarity=None if m.similarity is None else round(m.similarity, 3),
                       check_us=round(self.cost_s / max(1, self.checks) * 1e6, 1))
        return out


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation of two same-size float arrays (-1..1)."""
    da = a - float(a.mean())
    db = b - float(b.mean())
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    if denom < 1e-6:
        return 0.0
    return float((da * db).sum()) / denom
