"""A TCP proxy on 127.0.0.1 that a test owns: forwards to a target, and can cut or stall.

``cut()`` closes every connection and refuses new ones until ``restore()``; ``stall()`` keeps
connections open but forwards nothing (bytes wait in the kernel buffers, as on a link that
silently stopped) until ``restore()``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Literal

from tests.broker import free_port

Mode = Literal["up", "cut", "stall"]


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target_host:target_port`` on one thread (selectors)."""

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.mode: Mode = "up"
        self.connections = 0  # accepted since start
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        """Listen and start forwarding."""
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(16)
        ls.setblocking(False)
        self._listener = ls
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread and close every socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._drop_all()
        if self._listener is not None:
            self._listener.close()

    def cut(self) -> None:
        """Close every connection; refuse new ones until :meth:`restore`."""
        with self._lock:
            self.mode = "cut"
        self._drop_all()

    def stall(self) -> None:
        """Forward nothing (connections stay open) until :meth:`restore`."""
        with self._lock:
            self.mode = "stall"

    def restore(self) -> None:
        """Forward again."""
        with self._lock:
            self.mode = "up"

    def _drop_all(self) -> None:
        with self._lock:
            socks = list(self._pairs)
            self._pairs.clear()
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        assert self._listener is not None
        sel.register(self._listener, selectors.EVENT_READ)
        registered: set[socket.socket] = set()
        while not self._stop.is_set():
            with self._lock:
                mode = self.mode
                live = set(self._pairs)
            for s in registered - live:  # closed by cut()
                with contextlib.suppress(KeyError, ValueError):
                    sel.unregister(s)
            registered &= live
            if mode == "up":
                for s in live - registered:
                    sel.register(s, selectors.EVENT_READ)
                    registered.add(s)
            else:  # stalled or cut: read nothing
                for s in list(registered):
                    sel.unregister(s)
                    registered.discard(s)
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept(mode)
                    continue
                self._forward(sock)
        sel.close()

    def _accept(self, mode: Mode) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        if mode == "cut":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        client.setblocking(False)
        upstream.setblocking(False)
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client
            self.connections += 1

    def _forward(self, sock: socket.socket) -> None:
        with self._lock:
            peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                peer.setblocking(True)
                peer.settimeout(5)
                peer.sendall(data)
                peer.setblocking(False)
                return
            except OSError:
                pass
        with self._lock:
            self._pairs.pop(sock, None)
            self._pairs.pop(peer, None)
        for s in (sock, peer):
            with contextlib.suppress(OSError):
                s.close()
