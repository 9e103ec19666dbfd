"""A TCP forwarder on a loopback port that the test can close and open again.

Used to decide *who* reaches the broker first after it restarts: closing the gate refuses new
connections (and cuts the ones it carries), opening it listens again on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.broker import free_port


class TcpGate:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target`` while open.

    Args:
        target: the port to forward to.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def open(self) -> TcpGate:
        """Listen and forward."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        self._spawn(self._accept, server)
        return self

    def close(self) -> None:
        """Stop listening, cut every forwarded connection and join the threads."""
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        for s in [*([server] if server else []), *conns]:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name="tcpgate")  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._server is None:
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
