"""The live view's HTTP server: the page, MJPEG streams, snapshots and state.

Bounded like the metrics endpoint: one thread per connection, at most ``max_clients`` at
once (more get ``503`` at once and are closed), every socket with a timeout (a connection
that sends nothing for ``IDLE_TIMEOUT_S`` is closed; a stream whose client does not take a frame
within ``WRITE_TIMEOUT_S`` is dropped), HTTP/1.0 (one request per connection). Viewers never
hold up a pipeline: each stream waits for the tap's newest frame; nothing is queued for them.

Access: with a token configured every request needs it (``Authorization: Bearer <token>`` or
``?token=<token>``, compared in constant time); without one the server must be bound to a
loopback address (preflight refuses anything else) and answers loopback clients only. A
refused request gets ``401`` and no image bytes.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edge_agent.capped_http import CappedHTTPServer
from edge_agent.config import ViewConfig
from edge_agent.errors import ConfigError
from edge_agent.view.tap import ViewTap

logger = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 2.0  # per receive, as the metrics endpoint: a request is one short message
WRITE_TIMEOUT_S = 10.0  # a viewer that does not take one frame in this time is dropped
SNAPSHOT_WAIT_S = 10.0  # how long /snapshot waits for a fresh frame
CREDENTIAL_NAME = "view-token"  # the file under $CREDENTIALS_DIRECTORY (LoadCredential=)
BOUNDARY = "edge-agent-frame"
_ROUTE = re.compile(r"^/(stream|snapshot)/([a-z0-9_-]{1,64})\.(mjpg|jpg)$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def load_token(cfg: ViewConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The view's token: ``token_file``, else ``$CREDENTIALS_DIRECTORY/view-token``, else None.

    Raises:
        ConfigError: the file cannot be read, or it holds no token.
    """
    env = os.environ if environ is None else environ
    path: Path | None = cfg.token_file
    if path is None and env.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        path = candidate if candidate.exists() else None
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"view.token_file: cannot read {path}: {exc}") from None
    if len(token) < 16:
        raise ConfigError(f"view.token_file: {path} holds {'no' if not token else 'a short'} "
                          "token (expected 16 or more characters, e.g. from "
                          "`openssl rand -hex 32`)")
    return token


def access_problems(cfg: ViewConfig, token: str | None) -> list[str]:
    """Why this view config must not start (empty when it may)."""
    if cfg.enabled and token is None and not is_loopback(cfg.bind):
        return [f"view.bind: {cfg.bind} is not a loopback address: set view.token_file (or "
                f"a {CREDENTIAL_NAME} credential) so every request needs the token, or bind "
                "127.0.0.1"]
    return []


class _Server(CappedHTTPServer):
    daemon_threads = True
    block_on_close = False
    busy_reply = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                  b"Retry-After: 5\r\nConnection: close\r\n\r\n")

    def __init__(self, address: tuple[str, int], view: ViewServer) -> None:
        self.view = view
        super().__init__(address, _Handler, view.cfg.max_clients, "view")

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]  # called from the request thread's except block
        if isinstance(exc, OSError):  # the client went away or timed out
            logger.debug("view http: %s: %s", client_address[0], exc)
        else:
            logger.error("view http: error serving %s: %r", client_address[0], exc)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = IDLE_TIMEOUT_S
    server_version = "edge-agent-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("view %s: %s", self.client_address[0], format % args)

    def _headers(self, status: int, ctype: str, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")  # the token may be in the URL
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; img-src 'self'; connect-src 'self'; "
                         "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
        self.end_headers()

    def _text(self, status: int, text: str, extra: Mapping[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self, query: Mapping[str, list[str]]) -> bool:
        token = self.server.view.token
        if token is None:
            return is_loopback(self.client_address[0])
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))

    def do_GET(self) -> None:
        view = self.server.view
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if not self._authorized(query):
            view.count_unauthorized()
            self._text(401, "unauthorized: this view needs its token\n",
                       {"WWW-Authenticate": 'Bearer realm="edge-agent view"'})
            return
        if url.path == "/":
            body = view.page
            self._headers(200, "text/html; charset=utf-8", len(body))
            self.wfile.write(body)
            return
        if url.path == "/api/state":
            body = json.dumps(view.state(), separators=(",", ":"), default=str).encode()
            self._headers(200, "application/json", len(body))
            self.wfile.write(body)
            return
        match = _ROUTE.match(url.path)
        tap = view.taps().get(match.group(2)) if match else None
        if match is None or tap is None or (match.group(1) == "stream") != (
                match.group(3) == "mjpg"):
            self._text(404, "not found\n")
            return
        if match.group(1) == "snapshot":
            self._snapshot(tap)
        else:
            self._stream(tap)

    def _snapshot(self, tap: ViewTap) -> None:
        with tap.watch():
            seq, _, _ = tap.latest()
            got = tap.wait_new(seq, SNAPSHOT_WAIT_S)
        if got is None:
            self._text(503, "no frame could be shown (no frames, or redaction failed)\n",
                       {"Retry-After": "2"})
            return
        self._headers(200, "image/jpeg", len(got[1]))
        self.wfile.write(got[1])

    def _stream(self, tap: ViewTap) -> None:
        view = self.server.view
        self.connection.settimeout(WRITE_TIMEOUT_S)  # sendall: total time for one frame
        self._headers(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        seq = 0
        with tap.watch():
            view.count_stream(+1)
            try:
                while not view.stopping.is_set():
                    got = tap.wait_new(seq, 1.0)
                    if got is None:
                        continue
                    seq, jpeg = got
                    head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                            f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
                    self.wfile.write(head + jpeg + b"\r\n")
                    self.wfile.flush()
            except (OSError, TimeoutError):
                pass  # the viewer went away or was too slow: drop it
            finally:
                view.count_stream(-1)


class ViewServer:
    """The live view, bound at construction (an occupied port fails at start-up).

    Args:
        cfg: the ``view`` section.
        token: the token (:func:`load_token`), or None for loopback-only access.
        taps: returns the current taps by pipeline name (pipelines may be reloaded).
        state: returns the side panel's JSON (pipelines' status, stages, updates).

    Attributes:
        port: the bound port (the real one when the config asked for port 0).
    """

    def __init__(self, cfg: ViewConfig, token: str | None,
                 taps: Callable[[], Mapping[str, ViewTap]],
                 state: Callable[[], Any]) -> None:
        problems = access_problems(cfg, token)
        if problems:
            raise ConfigError(problems)
        self.cfg = cfg
        self.token = token
        self.taps = taps
        self.state = state
        self.page = resources.files("edge_agent.view").joinpath("page.html").read_bytes()
        self.stopping = threading.Event()
        self.unauthorized = 0
        self.streaming = 0  # open streams (see count_stream)
        self._count_lock = threading.Lock()
        self._httpd = _Server((cfg.bind, cfg.port), self)
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> int:
        """Connections refused with 503 so far (over max_clients at once)."""
        return self._httpd.refused

    def count_stream(self, delta: int) -> None:
        """A stream opened (+1) or ended (-1); handler threads do this concurrently."""
        with self._count_lock:
            self.streaming += delta

    def count_unauthorized(self) -> None:
        """A request was refused with 401."""
        with self._count_lock:
            self.unauthorized += 1

    @property
    def url(self) -> str:
        """The page's URL (without the token)."""
        host = f"[{self.cfg.bind}]" if ":" in self.cfg.bind else self.cfg.bind
        return f"http://{host}:{self.port}/"

    def start(self) -> None:
        """Serve on a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2}, name="view-http",
                                        daemon=True)
        self._thread.start()
        logger.info("live view on %s (%s)", self.url,
                    "token required" if self.token else "loopback only")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, end the streams, close the socket; safe to call twice."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._httpd.shutdown()
            thread.join(timeout)
        self._httpd.server_close()
        deadline = time.monotonic() + timeout
        while self.streaming > 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # streams notice ``stopping`` within a second
