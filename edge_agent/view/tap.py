"""A pipeline's tap for the live view: frames are taken only while someone watches.

The pipeline's post thread asks :meth:`ViewTap.wanted` (one attribute read and a clock call)
and, only when it says yes, hands the frame and its result over with :meth:`ViewTap.offer`:
a one-slot mailbox, newest wins, never a queue. A render thread, started when the first
viewer arrives and ended when the last one has been gone for a while, redacts, annotates and
encodes at most ``max_fps`` frames a second at a lowered priority, and wakes the viewers. A
frame whose redaction fails is not shown: viewers keep the last good one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edge_agent.types import Frame, Result

logger = logging.getLogger(__name__)

Render = Callable[[Frame, Result], "tuple[bytes, dict[str, Any]] | None"]
"""``render(frame, result) -> (jpeg, info)``, or None when the frame must not be shown."""

IDLE_S = 2.0  # the render thread ends after this long without viewers
RENDER_NICE = 10  # niceness added to the render thread: the pipeline wins a contended core


class ViewTap:
    """The live view's window on one pipeline.

    Args:
        pipeline: the pipeline name.
        render: redacts, annotates and encodes one frame (see :data:`Render`).
        max_fps: frames rendered per second, at most.
    """

    def __init__(self, pipeline: str, render: Render, max_fps: float = 5.0) -> None:
        self.pipeline = pipeline
        self._render = render
        self._interval = 1.0 / max_fps
        self._watchers = 0
        self._next_offer = 0.0
        self._slot: tuple[Frame, Result] | None = None
        self._cond = threading.Condition()
        self._seq = 0
        self._jpeg: bytes | None = None
        self._info: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self.rendered = 0
        self.refused = 0

    # ------------------------------------------------------------------ pipeline side

    def wanted(self) -> bool:
        """Whether the pipeline should offer its current frame (someone watches, and the
        rate allows another frame). Cheap: called on every frame."""
        return self._watchers > 0 and time.monotonic() >= self._next_offer

    def offer(self, frame: Frame, result: Result) -> None:
        """Hand over a frame (copied: the source may reuse its buffer); replaces any frame
        still waiting, so a slow renderer drops frames instead of queueing them."""
        self._next_offer = time.monotonic() + self._interval
        image = frame.image
        if image is None:
            return
        copy = Frame(frame.index, frame.ts, image=np.array(image, copy=True))
        with self._cond:
            self._slot = (copy, result)
            self._cond.notify_all()

    # ------------------------------------------------------------------ viewer side

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Count a viewer for the duration of the block (starts rendering if needed)."""
        with self._cond:
            self._watchers += 1
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"{self.pipeline}-view")
                self._thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._watchers -= 1

    @property
    def watchers(self) -> int:
        """Viewers now (streams and snapshot requests)."""
        return self._watchers

    def latest(self) -> tuple[int, bytes | None, dict[str, Any]]:
        """``(seq, jpeg, info)`` of the last frame rendered (seq 0: none yet)."""
        with self._cond:
            return self._seq, self._jpeg, dict(self._info)

    def wait_new(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The first frame rendered after ``after``, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seq <= after or self._jpeg is None:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return None
                self._cond.wait(left)
            return self._seq, self._jpeg

    def close(self, timeout: float = 5.0) -> None:
        """Stop rendering and wake every viewer."""
        with self._cond:
            self._closed = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ render thread

    def _run(self) -> None:
        _lower_priority(RENDER_NICE)
        idle_since: float | None = None
        try:
            while True:
                with self._cond:
                    while self._slot is None and not self._closed:
                        if self._watchers == 0:
                            idle_since = idle_since or time.monotonic()
                            if time.monotonic() - idle_since >= IDLE_S:
                                self._thread = None
                                return
                        else:
                            idle_since = None
                        self._cond.wait(0.5)
                    if self._closed:
                        return
                    slot, self._slot = self._slot, None
                assert slot is not None
                try:
                    out = self._render(*slot)
                except Exception:  # a broken frame must not end the view
                    logger.exception("view %s: rendering failed", self.pipeline)
                    out = None
                with self._cond:
                    if out is None:
                        self.refused += 1
                        continue
                    self._jpeg, self._info = out
                    self._seq += 1
                    self.rendered += 1
                    self._cond.notify_all()
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None


def _lower_priority(increment: int) -> None:
    """Raise the calling thread's niceness (Linux: per thread; elsewhere nothing)."""
    if not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except OSError:
        logger.debug("could not lower the view thread's priority")
