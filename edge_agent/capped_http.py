"""An HTTP server that serves at most N connections at once and sheds the rest cheaply.

Shared by the Prometheus endpoint and the local view: a flood of held connections must
neither exhaust the daemon's file descriptors nor start a thread each, and must be refused
fast enough that a legitimate client is not stuck behind it.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


class CappedHTTPServer(ThreadingHTTPServer):
    """At most ``max_connections`` connections are served at once; one beyond that gets
    ``busy_reply`` (if any) and is closed at once, its file descriptor freed.

    The listen backlog is deep (128, not socketserver's 5): with a shallow one a flood fills
    the kernel's accept queue, the kernel drops further SYNs and every client, a scraper
    included, waits for its SYN to be retransmitted (1 s, 3 s, 7 s ...) instead of being
    accepted and answered or refused at once. Measured in the daemon: 600 held connections
    took 86 s to open with a backlog of 5, and arrived too slowly to ever reach the cap.

    Attributes:
        refused: connections refused so far (over the cap).
    """

    request_queue_size = 128
    busy_reply: bytes | None = None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int, name: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_connections = max_connections
        self.name = name
        self.refused = 0
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            if self.refused in (1, 10, 100, 1000) or self.refused % 10000 == 0:
                logger.warning("%s http: %d connections refused so far (over the cap of %d "
                               "at once)", self.name, self.refused, self.max_connections)
            if self.busy_reply is not None:
                try:
                    request.settimeout(1.0)
                    request.sendall(self.busy_reply)
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._slots.release()
