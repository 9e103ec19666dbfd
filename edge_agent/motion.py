"""The motion gate: run inference only when something moves, plus a heartbeat.

Each frame is shrunk to a small grey copy (``MotionConfig.width`` pixels wide, blurred to
suppress sensor noise and codec artefacts) and compared with a slowly updated background (a
running average). A pixel has changed when it differs from the background by more than
``threshold`` grey levels; the frame has motion when the changed fraction of the frame is at
least ``min_area``. Pixels inside ``masks`` (normalised polygons) never count.

Frames a source hands over still encoded (JPEG files, MJPEG packets: ``Frame.encoded``) are
measured on a reduced decode (DCT scaling, :mod:`edge_agent.sources.encoded`) instead of a
resized full decode; the pipeline decodes them in full only when the gate opens. Decisions
match those on full decodes (same episodes, ``tests/sources/test_encoded.py``).

After motion, the gate keeps saying yes for ``hold_frames`` more frames so the end of an
episode (the object that just left or stopped) reaches the model and the tracker.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from edge_agent.config import MotionConfig
from edge_agent.types import Box

logger = logging.getLogger(__name__)

BACKGROUND_ALPHA = 0.05  # running-average weight of each new frame (~20 frames of memory)
FAST_ALPHA = 0.5  # when most of the frame changed at once (lights, exposure): adapt fast
PARKED_ALPHA = 0.25  # pixels that differ from the background but no longer change
GLOBAL_CHANGE = 0.6  # changed fraction treated as a global change
HOLD_FRAMES = 3


class MotionGate:
    """Decides, per frame, whether inference should run.

    Args:
        cfg: threshold, min_area, heartbeat_s, width and masks.
        hold_frames: frames to keep saying yes after the last frame with motion.

    Attributes:
        checks: frames checked.
        motion_frames: frames with motion (not counting hold and heartbeats).
        heartbeats: frames let through only because the heartbeat was due.
        last_fraction: the changed fraction of the last frame checked.
    """

    def __init__(self, cfg: MotionConfig, *, hold_frames: int = HOLD_FRAMES) -> None:
        self.cfg = cfg
        self.hold_frames = hold_frames
        self.checks = 0
        self.motion_frames = 0
        self.heartbeats = 0
        self.last_fraction = 0.0
        self._background: np.ndarray | None = None  # (h, w, 3) float32 BGR
        self._previous: np.ndarray | None = None  # (h, w, 3) uint8, the last small copy
        self._small_size: tuple[int, int] = (0, 0)  # (w, h) of the grey copy
        self._frame_shape: tuple[int, ...] = ()
        self._keep: np.ndarray | None = None  # (h, w) uint8, 0 inside masks, 255 elsewhere
        self._changed: np.ndarray | None = None  # (h, w) uint8 of the last frame, 0/255
        self._hold = 0
        self._last_yes: float | None = None

    def reset(self) -> None:
        """Forget the background (a reopened camera, a new scene); the next frame passes."""
        self._background = None
        self._previous = None
        self._frame_shape = ()
        self._hold = 0
        self._last_yes = None

    def _setup(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        sw = max(8, min(self.cfg.width, w))
        sh = max(8, round(h * sw / w))
        self._small_size = (sw, sh)
        self._frame_shape = image.shape
        keep = np.full((sh, sw), 255, np.uint8)
        for polygon in self.cfg.masks:
            pts = np.array([[x * sw, y * sh] for x, y in polygon], np.float32)
            cv2.fillPoly(keep, [np.round(pts).astype(np.int32)], 0)
        self._keep = keep
        self._background = None
        self._previous = None
        self._last_yes = None  # a new scene: its first frame goes through (as a heartbeat)

    def _changed_mask(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(h, w) uint8, non-zero where any channel of ``a`` and ``b`` differs > threshold.

        Any channel, not a grey copy: a grey copy misses objects as bright as the background
        (a red coat on a grey wall differs by ~25 levels in grey, by ~100 in red). Going
        through a 0/255 per-channel mask and a grey conversion keeps it at ~35 us.
        """
        threshold = float(self.cfg.threshold)
        diff = cv2.absdiff(a, b)
        # compare on a single-channel view: how cv2.compare broadcasts a scalar over channels
        # changed between releases (OpenCV 5.1 applies it to the first channel only), a
        # one-channel (h, w*c) view of the same bytes means the same thing on every version
        flat = diff.reshape(diff.shape[0], -1)
        over = cv2.compare(flat, threshold, cv2.CMP_GT).reshape(diff.shape)  # type: ignore[call-overload]
        mask: np.ndarray = cv2.cvtColor(over, cv2.COLOR_BGR2GRAY) if over.ndim == 3 else over
        return mask

    def measure(self, image_bgr: np.ndarray) -> float:
        """Update the background with ``image_bgr`` and return the changed fraction (0..1)."""
        if image_bgr.shape != self._frame_shape:
            self._setup(image_bgr)
        # resize first (linear, ~80 us at 640x480), then blur the small copy (noise, codec
        # artefacts): an area resize of the full frame costs ~7x more for no better decisions
        small = cv2.resize(image_bgr, self._small_size, interpolation=cv2.INTER_LINEAR)
        small = cv2.GaussianBlur(small, (3, 3), 0)
        if self._background is None or self._previous is None:
            self._background = small.astype(np.float32)
            self._previous = small
            self._changed = np.zeros(small.shape[:2], np.uint8)
            return 0.0  # nothing to compare with yet (check() lets it through as heartbeat)
        background_u8 = cv2.convertScaleAbs(self._background)
        changed = self._changed_mask(small, background_u8)
        if self.cfg.masks and self._keep is not None:
            cv2.bitwise_and(changed, self._keep, dst=changed)
        count = cv2.countNonZero(changed)
        fraction = count / changed.size
        alpha = FAST_ALPHA if fraction >= GLOBAL_CHANGE else BACKGROUND_ALPHA
        cv2.accumulateWeighted(small, self._background, alpha)
        if count:  # a still scene (the common case) skips this
            # changed against the background but still against the previous frame: something
            # parked (or a light switched); blend those pixels in fast so the gate goes quiet
            moving = self._changed_mask(small, self._previous)
            parked = cv2.bitwise_and(changed, cv2.bitwise_not(moving))
            cv2.accumulateWeighted(small, self._background, PARKED_ALPHA, mask=parked)
        self._changed = changed
        self._previous = small
        return fraction

    @property
    def small(self) -> np.ndarray | None:
        """The small (blurred, BGR) copy of the last frame measured, or None."""
        return self._previous

    def check(self, image_bgr: np.ndarray, ts: float) -> bool:
        """Whether inference should run on this frame.

        Args:
            image_bgr: the frame, (H, W, 3) uint8 BGR (or (H, W) grey).
            ts: the frame's time in seconds (for the heartbeat).

        Returns:
            True on motion, during the hold after motion, or when the heartbeat is due
            (``heartbeat_s`` since the gate last said yes; the first frame is one).
        """
        self.checks += 1
        fraction = self.measure(image_bgr)
        self.last_fraction = fraction
        if fraction >= self.cfg.min_area:
            self.motion_frames += 1
            self._hold = self.hold_frames
            yes = True
        elif self._hold > 0:
            self._hold -= 1
            yes = True
        elif self._last_yes is None or ts - self._last_yes >= self.cfg.heartbeat_s:
            self.heartbeats += 1
            yes = True
        else:
            yes = False
        if yes:
            self._last_yes = ts
        return yes

    def motion_boxes(self, min_fraction: float | None = None) -> list[Box]:
        """Boxes (normalised xyxy) around the changed regions of the last frame checked.

        Args:
            min_fraction: drop regions smaller than this fraction of the frame
                (default: ``min_area`` / 4).
        """
        if self._changed is None or not self._changed.any():
            return []
        limit = (self.cfg.min_area / 4 if min_fraction is None else min_fraction)
        sw, sh = self._small_size
        grown = cv2.dilate(self._changed, np.ones((3, 3), np.uint8), iterations=2)
        count, _, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        boxes: list[Box] = []
        for x, y, w, h, area in stats[1:count]:
            if area / (sw * sh) >= limit:
                boxes.append((x / sw, y / sh, (x + w) / sw, (y + h) / sh))
        return boxes

    def counters(self) -> dict[str, float]:
        """Counters for stats and metrics."""
        return {"checks": self.checks, "motion_frames": self.motion_frames,
                "heartbeats": self.heartbeats, "last_fraction": self.last_fraction}
