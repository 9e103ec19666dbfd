"""An HTTP MJPEG stream served by the test (multipart/x-mixed-replace, as IP cameras do).

Frames come from the synthetic scene (moving figures on a textured background, sensor noise),
encoded with OpenCV. ``stop()`` closes the listener and every open stream (the camera went
away); ``start()`` serves again on the same port. ``freeze`` repeats one frame; ``corrupt``
sends a truncated JPEG every ``corrupt`` frames.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2

from edge_agent.config import SyntheticSourceConfig
from edge_agent.sources.synthetic import SyntheticSource
from tests.broker import free_port

BOUNDARY = "edgeagentframe"


class MjpegServer:
    """Serve ``/stream.mjpg`` on 127.0.0.1 at ``fps``.

    Attributes:
        frames_sent: JPEG parts written, over all clients.
        clients: stream requests served since start.
        corrupt: every n-th frame is a truncated JPEG (0: never).
    """

    def __init__(self, *, fps: float = 10.0, width: int = 640, height: int = 480,
                 port: int | None = None) -> None:
        self.fps = fps
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.frames_sent = 0
        self.clients = 0
        self.corrupt = 0
        self._scene = SyntheticSource(SyntheticSourceConfig(
            type="synthetic", width=width, height=height, seed=3, objects=3))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The stream's URL."""
        return f"http://{self.host}:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        """Listen (again) on the port and serve."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                outer._serve(self)

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._running.set()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="chaos-mjpeg", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open stream."""
        self._running.clear()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        conn = handler.connection
        with self._lock:
            self._conns.add(conn)
            self.clients += 1
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            handler.send_header("Cache-Control", "no-cache")
            handler.end_headers()
            n = 0
            next_t = time.monotonic()
            while self._running.is_set():
                data = self._jpeg(n)
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n").encode() + data + b"\r\n"
                handler.wfile.write(part)
                handler.wfile.flush()
                self.frames_sent += 1
                n += 1
                next_t += 1.0 / self.fps
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_t = time.monotonic()
        except OSError:
            pass  # the client went away, or stop() closed the stream
        finally:
            with self._lock:
                self._conns.discard(conn)

    def _jpeg(self, n: int) -> bytes:
        ok, buf = cv2.imencode(".jpg", self._scene.render(n), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        data = buf.tobytes()
        if self.corrupt and n % self.corrupt == self.corrupt - 1:
            return data[: len(data) // 3]
        return data
