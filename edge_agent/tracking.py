"""An IoU tracker: stable track ids and enter/leave events with dwell time.

Per label, detections are matched to tracks greedily by IoU (highest first, vectorised IoU
matrix) against each track's box predicted one step ahead at its recent velocity. A new
track is tentative until it was seen in ``min_hits`` inference frames: then it gets its
public id (rising from 1) and an ``enter`` event. A tentative track that misses a frame is
dropped (a flicker, never published); a confirmed one that misses more than ``max_missed``
inference frames in a row has left: a ``leave`` event carries its dwell time.

With motion gating, call :meth:`IouTracker.update` only for frames that ran inference: a
still scene keeps its tracks. Keep running inference while :attr:`IouTracker.pending` is
true, so objects that walked out are confirmed gone without waiting for the heartbeat.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge_agent.config import TrackingConfig
from edge_agent.types import Box, Detection, TrackEvent

VELOCITY_SMOOTHING = 0.5  # weight of the newest box displacement in the velocity estimate


@dataclass(slots=True)
class _Track:
    label: str
    class_id: int
    box: np.ndarray  # (4,) float64 xyxy, normalised
    velocity: np.ndarray  # (4,) per inference frame
    first_ts: float
    last_ts: float
    hits: int = 1
    missed: int = 0
    track_id: int | None = None  # public id, once confirmed

    def as_box(self) -> Box:
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return (x0, y0, x1, y1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy: (N, M)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(bottom_right - top_left, 0.0)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    iou: np.ndarray = inter / np.maximum(union, 1e-12)  # empty boxes: 0, no division by 0
    return iou


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) matched greedily by descending IoU, each row and column once."""
    rows, cols = np.nonzero(iou >= threshold)
    if rows.size == 0:
        return []
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for r, c in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


class IouTracker:
    """Tracks detections across inference frames of one pipeline.

    Args:
        cfg: iou_threshold, min_hits, max_missed.
        pipeline: the pipeline name, carried in the events.

    Attributes:
        next_id: the public id the next confirmed track gets.
    """

    def __init__(self, cfg: TrackingConfig, pipeline: str) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.next_id = 1
        self._tracks: list[_Track] = []

    @property
    def active(self) -> int:
        """Confirmed tracks currently present."""
        return sum(1 for t in self._tracks if t.track_id is not None)

    @property
    def pending(self) -> bool:
        """Whether a confirmed track is unseen but not yet declared gone."""
        return any(t.track_id is not None and t.missed > 0 for t in self._tracks)

    def update(self, detections: tuple[Detection, ...],
               ts: float) -> tuple[tuple[Detection, ...], list[TrackEvent]]:
        """Match one inference frame's detections to the tracks.

        Args:
            detections: the frame's detections (boxes normalised xyxy).
            ts: the frame's time in seconds.

        Returns:
            The detections in the same order, ``track_id`` set for those of confirmed tracks
            (None while a track is tentative), and the enter/leave events of this frame.
        """
        events: list[TrackEvent] = []
        assigned: list[_Track | None] = [None] * len(detections)
        matched: set[int] = set()  # id() of the tracks seen in this frame
        tracks = self._tracks
        if detections:
            boxes = np.array([d.box for d in detections], dtype=np.float64)  # (D, 4)
            taken: set[int] = set()
            if tracks:
                # one IoU matrix for all labels, cross-label pairs zeroed: per-label matching
                # at the cost of a single vectorised pass
                codes: dict[str, int] = {}
                det_codes = np.array([codes.setdefault(d.label, len(codes)) for d in detections])
                trk_codes = np.array([codes.get(t.label, -1) for t in tracks])
                prev = np.array([t.box for t in tracks])  # (T, 4)
                vel = np.array([t.velocity for t in tracks])  # (T, 4)
                steps = np.array([t.missed + 1 for t in tracks], dtype=np.float64)  # (T,)
                iou = iou_matrix(prev + vel * steps[:, None], boxes)
                iou[trk_codes[:, None] != det_codes[None, :]] = 0.0
                pairs = greedy_match(iou, self.cfg.iou_threshold)
                if pairs:
                    rows = np.array([r for r, _ in pairs])
                    cols = np.array([c for _, c in pairs])
                    new_vel = ((1 - VELOCITY_SMOOTHING) * vel[rows] + VELOCITY_SMOOTHING
                               * (boxes[cols] - prev[rows]) / steps[rows, None])
                    for k, (r, c) in enumerate(pairs):
                        t = tracks[r]
                        t.box = boxes[c]
                        t.velocity = new_vel[k]
                        t.hits += 1
                        t.missed = 0
                        t.last_ts = ts
                        t.class_id = detections[c].class_id
                        assigned[c] = t
                        matched.add(id(t))
                        taken.add(c)
            for c, det in enumerate(detections):
                if c not in taken:
                    t = _Track(det.label, det.class_id, boxes[c], np.zeros(4), ts, ts)
                    tracks.append(t)
                    assigned[c] = t
                    matched.add(id(t))
        kept: list[_Track] = []
        for t in self._tracks:
            if id(t) in matched:
                if t.track_id is None and t.hits >= self.cfg.min_hits:
                    t.track_id = self.next_id
                    self.next_id += 1
                    events.append(self._event("enter", t, ts, ts - t.first_ts))
                kept.append(t)
                continue
            t.missed += 1
            if t.track_id is None:
                continue  # a tentative track that vanished: a flicker
            if t.missed > self.cfg.max_missed:
                events.append(self._event("leave", t, ts, t.last_ts - t.first_ts))
                continue
            kept.append(t)
        self._tracks = kept
        out = tuple(det if t is None or t.track_id is None
                    else dataclasses.replace(det, track_id=t.track_id)
                    for det, t in zip(detections, assigned, strict=True))
        return out, events

    def reset(self, ts: float) -> list[TrackEvent]:
        """Forget every track (source reopened or finished); confirmed ones leave now."""
        events = [self._event("leave", t, ts, t.last_ts - t.first_ts)
                  for t in self._tracks if t.track_id is not None]
        self._tracks = []
        return events

    def _event(self, kind: Literal["enter", "leave"], t: _Track, ts: float,
               dwell: float) -> TrackEvent:
        return TrackEvent(pipeline=self.pipeline, ts=ts, event=kind,
                          track_id=t.track_id or 0, label=t.label, class_id=t.class_id,
                          dwell_s=max(0.0, dwell), box=t.as_box())
