"""The per-pipeline privacy policy: what of a result may leave the device, and in what form.

One :class:`PrivacyPolicy` per pipeline turns internal :class:`~edge_agent.types.Result`
objects into sealed contract messages (:mod:`edge_agent.contract.messages`) for the egress
guard.
Rules, in order: label allow/deny (case-insensitive), minimum score (non-finite scores and
boxes are dropped too), mask centre, identifying fields (drop, hash or keep), box precision,
score dropping, aggregation to counts, and hard caps on every array. Every rule counts what
it suppresses (:meth:`PrivacyPolicy.counters`). Snapshots are made only when
``publish_images`` is on, rate-limited, with masks burned in and faces redacted; any failure
of the face detector means no snapshot (fail closed).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

import cv2
import numpy as np

from edge_agent.config import PrivacyConfig
from edge_agent.contract.messages import SCHEMA_IDS, OutgoingMessage
from edge_agent.contract.payloads import (
    ClassPayload,
    DetectionPayload,
    ModelRefPayload,
    SnapshotMetaPayload,
)
from edge_agent.privacy.masks import MaskSet
from edge_agent.privacy.redact import FaceDetector, TiledFaceFinder, expand_box, redact
from edge_agent.privacy.seal import Seal
from edge_agent.types import (
    Box,
    Detection,
    HealthEvent,
    ModelRef,
    Result,
    TargetChange,
    TrackEvent,
)

logger = logging.getLogger(__name__)

MAX_DETECTIONS = 1000
MAX_CLASSES = 100
MAX_VALUES = 1000
"""No numeric array longer than this leaves the device: ``values`` is truncated to it."""
MAX_ATTRIBUTES = 16
MAX_ATTRIBUTE_CHARS = 256
MAX_KEYPOINTS = 64
JPEG_BLOCK = 16
"""Snapshot masks cover every 16x16 JPEG block they touch, so they decode exactly black."""
VERIFY_PASSES = 2
"""Snapshot re-checks after redaction; faces still found are filled black, then re-checked."""

COUNTERS = (
    "results", "detections_in", "detections_published", "suppressed_by_label",
    "suppressed_by_score", "suppressed_by_mask", "suppressed_by_cap", "classes_suppressed",
    "values_truncated", "values_dropped", "attributes_dropped", "attributes_hashed",
    "keypoints_dropped", "events_published", "events_suppressed", "frames_masked",
    "faces_redacted", "faces_refound", "snapshots_published", "snapshots_refused",
    "snapshots_rate_limited", "snapshots_no_image", "snapshots_no_detector",
    "snapshots_detector_failed", "snapshots_faces_remain", "snapshots_encode_failed",
    "view_frames_refused",
)


def _no_count(name: str, n: int = 1) -> None:
    """A counter that counts nothing (see ``filter_detections(count=False)``)."""


def zone_counts(detections: list[Detection], names: tuple[str, ...]) -> dict[str, Any]:
    """``{zone: {label: count}}`` of ``detections``, every zone of ``names`` present."""
    counts: dict[str, dict[str, int]] = {name: {} for name in names}
    for det in detections:
        for name in det.zones:
            per = counts.setdefault(name, {})
            per[det.label] = per.get(det.label, 0) + 1
    return dict(counts)


def iso_ts(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO 8601 UTC with milliseconds and ``Z``."""
    ms = round(ts * 1000)
    base = datetime.fromtimestamp(ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{ms % 1000:03d}Z"


def model_dict(model: ModelRef) -> ModelRefPayload:
    """The ``model`` object of a payload."""
    return {"name": str(model.name)[:256], "version": max(0, int(model.version)),
            "sha256": str(model.sha256).lower()}


class PrivacyPolicy:
    """Applies one pipeline's :class:`~edge_agent.config.PrivacyConfig`."""

    def __init__(self, cfg: PrivacyConfig, pipeline: str, device_id: str, seal: Seal,
                 face_detector: FaceDetector | None = None, *, salt: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Set up the policy of ``pipeline``.

        Args:
            cfg: the pipeline's ``privacy`` section.
            pipeline: the pipeline name (topic level and payload field).
            device_id: the device id (payload field).
            seal: the agent's seal (:func:`edge_agent.privacy.new_seal`), shared with the guard.
            face_detector: ``detect(image_bgr) -> list[Box]`` on a full-resolution frame
                (normally a :class:`~edge_agent.privacy.redact.TiledFaceFinder`); required for
                snapshots while ``redact_faces`` is on.
            salt: the per-device key for hashing identifying fields
                (:func:`edge_agent.privacy.hashing.load_salt`); a random per-process one if
                None (hashes then change at every start).
            clock: monotonic seconds, for the snapshot rate limit (tests pass their own).
        """
        self.cfg = cfg
        self.pipeline = pipeline
        self.device_id = device_id
        self._seal = seal
        self.face_detector = face_detector
        self.masks = MaskSet(cfg.masks)
        self._salt = salt if salt is not None else os.urandom(32)
        self._clock = clock
        self._allow = None if cfg.labels.allow is None else {
            s.strip().casefold() for s in cfg.labels.allow}
        self._deny = {s.strip().casefold() for s in cfg.labels.deny}
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._snap_times: collections.deque[float] = collections.deque()
        self._snap_lock = threading.Lock()
        self._warned_no_detector = False

    # ------------------------------------------------------------------ rules

    def counters(self) -> dict[str, int]:
        """A copy of this pipeline's counters (every rule, snapshots, faces)."""
        return dict(self._counters)

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] += n

    def label_allowed(self, label: str) -> bool:
        """Whether ``label`` passes the allow and deny lists (compared case-insensitively)."""
        key = label.strip().casefold()
        if key in self._deny:
            return False
        return self._allow is None or key in self._allow

    def _score_ok(self, score: float) -> bool:
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            return False
        return self.cfg.min_score is None or score >= self.cfg.min_score

    def _box(self, box: Box) -> list[float] | None:
        if len(box) != 4 or not all(map(math.isfinite, box)):
            return None
        p = self.cfg.box_precision
        # clamp to [0, 1] like round(min(1.0, max(0.0, v)), p), without the calls (hot path);
        # "v > 0.0" also turns -0.0 into 0.0, as max(0.0, -0.0) does
        return [(round(v, p) if v < 1.0 else 1.0) if v > 0.0 else 0.0 for v in map(float, box)]

    def _hash(self, value: str) -> str:
        digest = hmac.new(self._salt, value.encode("utf-8", "replace"), hashlib.sha256)
        return "hmac-sha256:" + digest.hexdigest()[:32]

    def _attributes(self, attrs: Any) -> dict[str, str] | None:
        if not attrs:
            return None
        mode = self.cfg.identifying_fields
        if mode == "drop":
            self._count("attributes_dropped", len(attrs))
            return None
        out: dict[str, str] = {}
        for key, value in list(attrs.items())[:MAX_ATTRIBUTES]:
            text = str(value)
            if mode == "hash":
                self._count("attributes_hashed")
                out[str(key)[:64]] = self._hash(text)
            else:
                out[str(key)[:64]] = text[:MAX_ATTRIBUTE_CHARS]
        return out

    def filter_detections(self, detections: tuple[Detection, ...], *,
                          count: bool = True) -> list[Detection]:
        """The detections that pass labels, score, finite box and masks.

        Args:
            detections: a frame's detections.
            count: count what is suppressed (False for the live view, which shows the same
                detections a result carries without publishing anything).
        """
        kept: list[Detection] = []
        bump = self._count if count else _no_count
        for det in detections:
            if not self.label_allowed(det.label):
                bump("suppressed_by_label")
            elif (not self._score_ok(float(det.score)) or len(det.box) != 4
                  or not all(map(math.isfinite, det.box))):
                bump("suppressed_by_score")
            elif self.masks and self.masks.contains((det.box[0] + det.box[2]) / 2,
                                                    (det.box[1] + det.box[3]) / 2):
                bump("suppressed_by_mask")
            else:
                kept.append(det)
        return kept

    def _detection(self, det: Detection, zones: bool = False) -> DetectionPayload:
        out: DetectionPayload = {"label": str(det.label)[:128], "class_id": int(det.class_id)}
        if not self.cfg.drop_scores:
            out["score"] = round(float(det.score), 4)
        box = self._box(det.box)
        if box is not None:  # always: filter_detections keeps finite 4-boxes only
            out["box"] = box
        if det.keypoints:
            p = self.cfg.box_precision
            pts = [[round(float(x), p), round(float(y), p)] for x, y in det.keypoints
                   if math.isfinite(x) and math.isfinite(y)][:MAX_KEYPOINTS]
            if pts:
                out["keypoints"] = pts
        if det.track_id is not None and det.track_id >= 0:
            out["track_id"] = int(det.track_id)
        attrs = self._attributes(det.attributes)
        if attrs:
            out["attributes"] = attrs
        if zones:
            out["zones"] = list(det.zones)
        return out

    # ------------------------------------------------------------------ messages

    def mask_frame(self, image: np.ndarray) -> np.ndarray:
        """Black out the mask polygons of ``image`` **in place** (before inference).

        The caller must own the frame (the pipeline's frame is used by nobody else). The
        pixel mask is computed once per frame size.
        """
        if self.masks:
            self.masks.apply(image)
            self._count("frames_masked")
        return image

    def result(self, result: Result, model: ModelRef | None = None) -> OutgoingMessage:
        """The sealed result message for ``result`` (``seq`` and ``id`` come from the outbox).

        Args:
            result: the internal, pre-policy result.
            model: the model to name; default ``result.model``.
        """
        self._count("results")
        inf = result.inference
        self._count("detections_in", len(inf.detections))
        kept = self.filter_detections(inf.detections)
        counts: dict[str, int] = {}
        for det in kept:
            counts[det.label] = counts.get(det.label, 0) + 1
        payload: dict[str, Any] = {
            "schema": SCHEMA_IDS["result"], "device": self.device_id, "pipeline": self.pipeline,
            "ts": iso_ts(result.ts), "model": model_dict(model or result.model),
            "frame": {"index": max(0, int(result.frame_index)), "width": max(0, result.width),
                      "height": max(0, result.height)},
            "inference_ms": round(max(0.0, float(result.inference_ms)), 3)
            if math.isfinite(result.inference_ms) else 0.0,
        }
        zoned = bool(result.zone_names)
        if zoned:  # counts per zone and label, over what passed the policy
            payload["zones"] = zone_counts(kept, result.zone_names)
        classes = self._classes(inf.classes)
        if self.cfg.aggregate == "counts":
            if classes:
                best = classes[0]["label"]
                counts[best] = counts.get(best, 0) + 1
            if inf.values is not None:
                self._count("values_dropped")
            payload["aggregate"] = "counts"
            payload["counts"] = counts
            self._count("detections_published", len(kept))
            return self._seal.issue("result", self.pipeline, payload)
        if len(kept) > MAX_DETECTIONS:
            self._count("suppressed_by_cap", len(kept) - MAX_DETECTIONS)
            kept = kept[:MAX_DETECTIONS]
        if inf.detections or not (inf.classes or inf.values):
            payload["detections"] = [self._detection(d, zoned) for d in kept]
        self._count("detections_published", len(kept))
        payload["counts"] = counts
        if classes is not None:
            payload["classes"] = classes
        values = self._values(inf.values)
        if values is not None:
            payload["values"] = values
        return self._seal.issue("result", self.pipeline, payload)

    def _classes(self, classes: Any) -> list[ClassPayload] | None:
        if classes is None:
            return None
        out: list[ClassPayload] = []
        for c in sorted(classes, key=lambda c: -c.score if math.isfinite(c.score) else 0.0):
            if not self.label_allowed(c.label) or not self._score_ok(float(c.score)):
                self._count("classes_suppressed")
                continue
            item: ClassPayload = {"label": str(c.label)[:128], "class_id": int(c.class_id)}
            if not self.cfg.drop_scores:
                item["score"] = round(float(c.score), 4)
            out.append(item)
        if len(out) > MAX_CLASSES:
            self._count("classes_suppressed", len(out) - MAX_CLASSES)
            out = out[:MAX_CLASSES]
        return out

    def _values(self, values: Any) -> list[float] | None:
        if values is None:
            return None
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size > MAX_VALUES:
            self._count("values_truncated")
            arr = arr[:MAX_VALUES]
        if not np.isfinite(arr).all():
            self._count("values_dropped")
            return None
        return [round(float(v), 6) for v in arr]

    def event(self, ev: TrackEvent) -> OutgoingMessage | None:
        """The sealed event message for a tracker event, or None when the policy hides it.

        Denied labels and tracks whose box centre is masked give nothing; in counts mode an
        event carries no box.
        """
        box = self._box(ev.box)
        centre_masked = box is not None and bool(self.masks) and self.masks.contains(
            (ev.box[0] + ev.box[2]) / 2, (ev.box[1] + ev.box[3]) / 2)
        if not self.label_allowed(ev.label) or centre_masked:
            self._count("events_suppressed")
            return None
        payload: dict[str, Any] = {
            "schema": SCHEMA_IDS["event"], "device": self.device_id, "pipeline": self.pipeline,
            "ts": iso_ts(ev.ts), "event": ev.event, "track_id": max(0, int(ev.track_id)),
            "label": str(ev.label)[:128], "class_id": int(ev.class_id),
            "dwell_s": round(max(0.0, float(ev.dwell_s)), 3) if math.isfinite(ev.dwell_s)
            else 0.0,
        }
        if ev.zone is not None:
            payload["zone"] = str(ev.zone)[:64]
        if self.cfg.aggregate != "counts" and box is not None:
            payload["box"] = box
        self._count("events_published")
        return self._seal.issue("event", self.pipeline, payload)

    def health_event(self, ev: HealthEvent) -> OutgoingMessage:
        """The sealed event message for a camera-health or source event.

        It carries the event name and the check's figures (a handful of finite numbers about
        the whole picture: brightness, contrast, sharpness, similarity), never pixels, boxes
        or labels, so no label filter or mask applies to it.
        """
        payload: dict[str, Any] = {
            "schema": SCHEMA_IDS["event"], "device": self.device_id, "pipeline": self.pipeline,
            "ts": iso_ts(ev.ts), "event": ev.event,
        }
        figures = {str(k)[:32]: round(float(v), 4) for k, v in ev.figures[:8]
                   if math.isfinite(float(v))}
        if figures:
            payload["camera"] = figures
        self._count("events_published")
        return self._seal.issue("event", self.pipeline, payload)

    def target_event(self, change: TargetChange) -> OutgoingMessage:
        """The sealed ``target_changed`` event: which execution target serves now, and why.

        It carries target names and the reason text only (no image or detection data), so
        every policy lets it out.
        """
        payload: dict[str, Any] = {
            "schema": SCHEMA_IDS["event"], "device": self.device_id, "pipeline": self.pipeline,
            "ts": iso_ts(change.ts), "event": "target_changed",
            "from": None if change.previous is None else str(change.previous)[:64],
            "to": str(change.current)[:64], "reason": str(change.reason)[:256],
        }
        self._count("events_published")
        return self._seal.issue("event", self.pipeline, payload)

    # ------------------------------------------------------------------ snapshots

    def _rate_ok(self) -> bool:
        now = self._clock()
        with self._snap_lock:
            while self._snap_times and now - self._snap_times[0] >= 60.0:
                self._snap_times.popleft()
            return len(self._snap_times) < self.cfg.snapshots_per_minute

    def _refuse(self, reason: str) -> None:
        self._count("snapshots_refused")
        self._count(reason)

    def snapshot(self, result: Result) -> OutgoingMessage | None:
        """A redacted JPEG snapshot of ``result.image``, or None (off, rate-limited, failed).

        Only when ``publish_images`` is on, at most ``snapshots_per_minute`` in any 60 s;
        masks burned in; when ``redact_faces`` is on, every face the detector finds on the
        full-resolution frame is redacted, and the redacted image is checked again
        (``VERIFY_PASSES`` times): whatever is still found is filled black; if faces remain
        after that, or the detector is missing or raises, there is no snapshot (fail closed).
        """
        if not self.cfg.publish_images:
            return None
        if result.image is None or result.image.ndim != 3:
            self._refuse("snapshots_no_image")
            return None
        if not self._rate_ok():
            self._refuse("snapshots_rate_limited")
            return None
        redacted = self.redacted_copy(result.image)
        if redacted is None:
            return None
        image, faces = redacted
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY,
                                              self.cfg.snapshot_quality])
        if not ok:
            self._refuse("snapshots_encode_failed")
            return None
        data = buf.tobytes()
        with self._snap_lock:
            self._snap_times.append(self._clock())
        self._count("snapshots_published")
        h, w = image.shape[:2]
        meta: SnapshotMetaPayload = {
            "schema": SCHEMA_IDS["snapshot"], "device": self.device_id,
            "pipeline": self.pipeline, "ts": iso_ts(result.ts),
            "frame": {"index": max(0, int(result.frame_index)), "width": w, "height": h},
            "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            # "none found" (0) and "redaction off" (null, face_redaction "off") differ
            "faces_redacted": faces if self.cfg.redact_faces else None,
            "face_redaction": "on" if self.cfg.redact_faces else "off",
            "redact_mode": self.cfg.redact_mode,
            "masks": len(self.masks), "width": w, "height": h,
        }
        return self._seal.issue("snapshot", self.pipeline, meta, data=data)

    def redacted_copy(self, image: np.ndarray, *,
                      purpose: Literal["snapshot", "view"] = "snapshot"
                      ) -> tuple[np.ndarray, int] | None:
        """A copy of ``image`` as a snapshot may show it, and the number of faces redacted.

        The one redaction path of snapshots and the live view: masks burned in (whole JPEG
        blocks), and with ``redact_faces`` every face found redacted and re-checked. None
        when the image must not be shown (no detector, detector failed, faces remain).

        Args:
            image: (H, W, 3) uint8 BGR; not changed.
            purpose: ``snapshot`` counts refusals under ``snapshots_*``; ``view`` counts
                them as ``view_frames_refused``.
        """
        out = np.ascontiguousarray(image).copy()
        self.masks.apply(out, block=JPEG_BLOCK)
        if not self.cfg.redact_faces:
            return out, 0
        found = self._redact_faces(out, count=purpose == "snapshot")
        if found is None:
            if purpose == "view":
                self._count("view_frames_refused")
            return None
        self.masks.apply(out, block=JPEG_BLOCK)  # a blurred face may spill into a mask
        return out, found

    def _redact_faces(self, image: np.ndarray, count: bool = True) -> int | None:
        """Redact faces in place; the number redacted, or None when the image must not go.

        ``count``: count faces and refusals under the snapshot counters.
        """
        refuse = self._refuse if count else _no_count
        detector = self.face_detector
        if detector is None:
            if not self._warned_no_detector:
                logger.warning("pipeline %s: publish_images is on but no face detector is "
                               "available: no snapshots (fail closed)", self.pipeline)
                self._warned_no_detector = True
            refuse("snapshots_no_detector")
            return None
        total = 0
        mode = self.cfg.redact_mode
        changed: list[Box] = []
        for attempt in range(VERIFY_PASSES + 1):
            try:
                if attempt > 0 and isinstance(detector, TiledFaceFinder):
                    # re-check only what redaction changed
                    boxes = list(detector(image, changed))
                else:
                    boxes = list(detector(image))
            except Exception as exc:  # any failure of a guardrail: no snapshot
                logger.warning("pipeline %s: face detector failed (%s): snapshot dropped",
                               self.pipeline, type(exc).__name__)
                refuse("snapshots_detector_failed")
                return None
            if not boxes:
                return total
            if attempt == VERIFY_PASSES:
                refuse("snapshots_faces_remain")
                return None
            if attempt > 0:
                if count:
                    self._count("faces_refound", len(boxes))
            else:
                total = len(boxes)
                if count:
                    self._count("faces_redacted", len(boxes))
            redact(image, boxes, mode if attempt == 0 else "fill")
            changed += [expand_box(b) for b in boxes]
        return total
