"""Signals handled on a thread of their own, so that no handler ever takes a lock.

Python runs a signal handler on the main thread, between two bytecodes. A handler that sets a
``threading.Event`` deadlocks for good when the signal lands while the main thread is inside
that same Event's ``wait()``: it holds the Event's non-reentrant lock there, and the handler
waits for it on the same thread. Measured here: 5 of 300 SIGTERMs sent to a loop of
``Event.wait(0.0002)`` hung; with the daemon's ``wait(0.5)`` the window is narrow but real (CI
saw ``edge-agent run`` ignore SIGTERM once, until SIGKILL).

So the Python-level handler does nothing; the C-level handler writes the signal number to a
socket (:func:`signal.set_wakeup_fd`), and a relay thread reads it and runs the action on its
own thread, where taking a lock is safe. This also works while the main thread is stuck in a
C call.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from types import FrameType

logger = logging.getLogger(__name__)

_END = 0  # no signal has number 0: the relay's own "stop" byte


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the work is done by the relay thread."""


class SignalRelay:
    """Run ``actions[signum]()`` on a relay thread when the process gets ``signum``.

    Use from the main thread (``signal.signal`` and ``set_wakeup_fd`` require it)::

        relay = SignalRelay({signal.SIGTERM: stop.set, signal.SIGHUP: reload.set})
        relay.start()
        ...
        relay.stop()   # previous handlers back

    Actions must be quick (set an Event, write a flag); an exception in one is logged.
    """

    def __init__(self, actions: Mapping[int, Callable[[], None]],
                 name: str = "signal-relay") -> None:
        self.actions = dict(actions)
        self._name = name
        self._r: socket.socket | None = None
        self._w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._previous: dict[int, signal._HANDLER] = {}
        self._previous_fd = -1

    def start(self) -> None:
        """Install the handlers and start the relay thread (main thread only)."""
        if self._thread is not None:
            return
        self._r, self._w = socket.socketpair()
        self._w.setblocking(False)  # set_wakeup_fd requires it; a full buffer drops bytes
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._previous_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for signum in self.actions:
            self._previous[signum] = signal.signal(signum, _ignore)

    def stop(self) -> None:
        """Restore the previous handlers and wakeup fd; end the relay thread."""
        if self._thread is None or self._w is None or self._r is None:
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_fd)
        with contextlib.suppress(OSError):
            self._w.send(bytes([_END]))
        self._thread.join(5.0)
        self._thread = None
        self._w.close()
        self._r.close()
        self._r = self._w = None

    def _run(self) -> None:
        assert self._r is not None
        while True:
            try:
                data = self._r.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == _END:
                    return
                action = self.actions.get(signum)
                if action is None:
                    continue
                try:
                    action()
                except Exception:
                    logger.exception("handling signal %d failed", signum)
