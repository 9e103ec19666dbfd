"""systemd service notification (``sd_notify``) and the health-gated watchdog.

A unit with ``Type=notify`` waits for ``READY=1`` before it counts the service as started, and
with ``WatchdogSec=`` it restarts the service when ``WATCHDOG=1`` stops arriving. The protocol is
one datagram of ``KEY=VALUE`` lines to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``). We speak it ourselves: no libsystemd binding.

Everything here is a no-op when ``$NOTIFY_SOCKET`` is unset (run from a shell, in tests, in
Docker), so the agent calls it unconditionally.

Typical use by the agent::

    notifier = SystemdNotifier.from_env()
    ...preflight...
    notifier.ready("2 pipelines running")
    watchdog = Watchdog(notifier, healthy=lambda: all(p.heartbeat_fresh() for p in pipes))
    watchdog.start()
    ...
    notifier.stopping()
    watchdog.stop()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

# systemd drops notifications bigger than this (NOTIFY_BUFFER_MAX is 4 KiB in 252).
_MAX_DATAGRAM = 4096


def _socket_address(name: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: a path, or an abstract name."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout systemd expects pings within, in seconds, or None when off.

    Follows ``sd_watchdog_enabled``: ``$WATCHDOG_USEC`` gives the timeout; when
    ``$WATCHDOG_PID`` is set and names another process, the watchdog is not ours. Systemd sets
    both; a test that cannot know the child's pid in advance sets only ``WATCHDOG_USEC``.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
        return None
    if value <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            logger.warning("ignoring WATCHDOG_PID=%r (not an integer)", pid)
            return None
    return value / 1_000_000


class SystemdNotifier:
    """Sends state changes to systemd over ``$NOTIFY_SOCKET``; silent when there is none.

    Thread-safe: the watchdog thread and the agent's main thread share one notifier.
    A send that fails (systemd gone, socket full) is logged at debug level and reported as
    False: notifications are advisory, they never stop the agent.
    """

    def __init__(self, socket_name: str | None = None, *,
                 env: Mapping[str, str] | None = None) -> None:
        """Notify ``socket_name`` (a path or ``@abstract``); default ``$NOTIFY_SOCKET``.

        Pass ``""`` for a notifier that never sends.
        """
        if socket_name is None:
            socket_name = (os.environ if env is None else env).get("NOTIFY_SOCKET")
        self.socket_name = socket_name or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.sent = 0  # datagrams sent, for tests and debugging

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier for ``$NOTIFY_SOCKET`` (a no-op one when it is unset)."""
        return cls(None, env=env)

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify."""
        return self.socket_name is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one datagram; True when it was sent."""
        if self.socket_name is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8", "replace")[:_MAX_DATAGRAM]
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(payload, _socket_address(self.socket_name))
            except OSError as exc:
                logger.debug("sd_notify to %s failed: %s", self.socket_name, exc)
                return False
            self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up (or a reload) finished; optionally with a status line."""
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        """``STATUS=...``: the one-line state ``systemctl status`` shows."""
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: we are alive and healthy."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """``WATCHDOG=trigger``: ask systemd to act as if the watchdog had expired."""
        return self.notify("WATCHDOG=trigger")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down (systemd stops expecting watchdog pings)."""
        return self.notify("STOPPING=1", *self._status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1``: a config reload began; send :meth:`ready` when it is done.

        Carries ``MONOTONIC_USEC`` (CLOCK_MONOTONIC now), which ``Type=notify-reload``
        (systemd >= 253) requires and older versions ignore.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *self._status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: start-up or stop needs ``seconds`` more (a slow model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        """Close the socket; safe to call twice (a later notify reopens it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    @staticmethod
    def _status(text: str | None) -> tuple[str, ...]:
        if text is None:
            return ()
        return ("STATUS=" + " ".join(text.split()),)  # one line: systemd shows no newlines


class Watchdog:
    """Pings ``WATCHDOG=1`` at half the watchdog timeout, but only while ``healthy()`` holds.

    ``healthy`` is the agent's check that every pipeline's heartbeat is fresh. When it returns
    False (or raises) the ping is withheld: if the stall outlasts the timeout, systemd kills and
    restarts the service, which is the point. Recovery before the timeout resumes the pings.

    Attributes:
        interval: the watchdog timeout in seconds (pings go out every ``interval / 2``), or None
            when neither systemd nor the caller asked for a watchdog (then :meth:`start` does
            nothing).
        pings: WATCHDOG=1 datagrams sent.
        withheld: checks that found the agent unhealthy.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        healthy: Callable[[], bool],
        *,
        interval: float | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "edge-agent-watchdog",
    ) -> None:
        """Watch ``healthy`` for ``notifier``.

        Args:
            notifier: where pings go.
            healthy: True while every pipeline is making progress; called on the watchdog
                thread, so it must be cheap and thread-safe (read timestamps, no locks held long).
            interval: the timeout to honour, seconds; default: ``$WATCHDOG_USEC`` (see
                :func:`watchdog_interval`). Tests pass one when only ``NOTIFY_SOCKET`` is set.
            env: the environment to read (default ``os.environ``).
            name: the thread name.
        """
        self.notifier = notifier
        self.healthy = healthy
        self.interval = interval if interval is not None else watchdog_interval(env)
        self.pings = 0
        self.withheld = 0
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._was_healthy = True

    @property
    def enabled(self) -> bool:
        """Whether pings will be sent (a socket and an interval)."""
        return self.notifier.enabled and self.interval is not None and self.interval > 0

    @property
    def period(self) -> float | None:
        """Seconds between checks: half the timeout, as ``sd_watchdog_enabled(3)`` advises."""
        return None if self.interval is None else self.interval / 2

    def start(self) -> None:
        """Start the ping thread (no-op when the watchdog is off or already running)."""
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        logger.info("systemd watchdog on: timeout %.1f s, pinging every %.1f s while healthy",
                    self.interval, self.period)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging and join the thread; safe to call twice or without start."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("watchdog thread did not stop within %.1f s", timeout)

    def check(self) -> bool:
        """One round: ping when healthy; True when a ping went out."""
        try:
            ok = bool(self.healthy())
        except Exception:
            logger.exception("watchdog health check failed; withholding the ping")
            ok = False
        if ok != self._was_healthy:
            if ok:
                logger.info("pipelines healthy again; watchdog pings resumed")
            else:
                logger.warning("a pipeline has stalled; withholding watchdog pings "
                               "(systemd restarts the service after %.1f s)", self.interval or 0)
            self._was_healthy = ok
        if not ok:
            self.withheld += 1
            return False
        if self.notifier.watchdog():
            self.pings += 1
            return True
        return False

    def _run(self) -> None:
        period = self.period or 1.0
        self.check()
        while not self._stop.wait(period):
            self.check()
