"""Delivery pacing for file-like sources (video files, image folders, synthetic scenes).

A paced source hands over frame ``n`` no earlier than ``start + n / fps``. When the pipeline
falls behind by more than one frame interval, the schedule restarts from now instead of
bursting to catch up; file sources never drop frames themselves (the pipeline decides, from
``Source.live``, whether it may).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from edge_agent.types import EncodedPixels, Frame


class FramePacer:
    """Decides when the next frame of a paced source is due.

    Args:
        fps: frames per second; 0 or None means unpaced (every frame as soon as it is asked for).
        wake: set this event to interrupt a wait (the source's close()).
    """

    def __init__(self, fps: float | None, wake: threading.Event | None = None) -> None:
        self.interval = 1.0 / fps if fps and fps > 0 and math.isfinite(fps) else 0.0
        self._wake = wake or threading.Event()
        self._due: float | None = None

    @property
    def paced(self) -> bool:
        """Whether frames are paced at all."""
        return self.interval > 0.0

    def reset(self) -> None:
        """Restart the schedule: the next frame is due at once."""
        self._due = None

    def wait(self, timeout: float) -> bool:
        """Wait until the next frame is due, at most ``timeout`` seconds.

        Returns:
            True when the frame is due now (call :meth:`advance` once it is delivered); False
            when ``timeout`` ran out first or the wake event was set.
        """
        if not self.interval or self._due is None:
            return not self._wake.is_set()
        delay = self._due - time.monotonic()
        if delay <= 0:
            return not self._wake.is_set()
        if delay > timeout:
            self._wake.wait(max(timeout, 0.0))
            return False
        return not self._wake.wait(delay)

    def advance(self) -> None:
        """Schedule the frame after the one just delivered."""
        if not self.interval:
            return
        now = time.monotonic()
        if self._due is None or now - self._due > self.interval:
            # first frame, or the pipeline fell behind: restart the schedule, never burst
            self._due = now + self.interval
        else:
            self._due += self.interval


class PacedFileSource:
    """The ``read()`` of every paced file-like source (video files, image folders, scenes).

    A subclass sets ``_pacer``, ``_closed``, ``_read_lock``, ``_index`` (0) and ``_pending``
    (None) and implements :meth:`_next_image`. The next image is prepared first, so the wait
    for its due time hides the decode or render cost; ``close()`` on another thread sets
    ``_closed`` and takes ``_read_lock``, so an image is never released mid-decode.
    """

    _pacer: FramePacer
    _closed: threading.Event
    _read_lock: threading.Lock
    _index: int
    _pending: np.ndarray | EncodedPixels | None

    def _init_pacing(self, lock: threading.Lock | None = None) -> None:
        """Set the pacing state up (unpaced until open() sets the rate); ``lock``: the
        source's own lock when close() already takes one."""
        self._index = 0
        self._closed = threading.Event()
        self._pacer = FramePacer(0)
        self._read_lock = lock or threading.Lock()
        self._pending = None

    def _next_image(self) -> np.ndarray | EncodedPixels:
        """The image of frame ``_index`` (still encoded when the source defers decoding).

        Raises:
            SourceError: the source cannot be read, or was never opened.
            EOFError: it ended (and ``loop`` is off).
        """
        raise NotImplementedError

    def read(self, timeout: float) -> Frame | None:
        """The next frame in order, once it is due; None if not due within ``timeout``.

        Returns None at once after close().

        Raises:
            SourceError: the source cannot be read, or was never opened.
            EOFError: a finite source ended (and ``loop`` is off).
        """
        with self._read_lock:
            if self._closed.is_set():
                return None
            if self._pending is None:
                self._pending = self._next_image()
        if not self._pacer.wait(timeout):
            return None
        image, self._pending = self._pending, None
        if isinstance(image, np.ndarray):
            frame = Frame(index=self._index, ts=time.time(), image=image)
        else:
            frame = Frame(index=self._index, ts=time.time(), encoded=image)
        self._index += 1
        self._pacer.advance()
        return frame
