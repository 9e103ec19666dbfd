"""The live view's server: access rules, bounds, and that viewers never hold up a producer.

Real sockets on 127.0.0.1 (and, for addresses other than loopback, inside a network namespace
the test creates with ``unshare``); a real ViewTap rendering real JPEGs with OpenCV.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.config import ViewConfig
from edge_agent.errors import ConfigError
from edge_agent.types import Frame, Inference, ModelRef, Result
from edge_agent.view import server as server_mod
from edge_agent.view.server import ViewServer, load_token
from edge_agent.view.tap import ViewTap
from tests.conftest import IN_CI

TOKEN = "0123456789abcdef0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def _render(frame: Frame, result: Result) -> tuple[bytes, dict[str, Any]] | None:
    assert frame.image is not None
    if frame.image[0, 0, 0] == 13:  # a frame "whose redaction failed"
        return None
    ok, buf = cv2.imencode(".jpg", frame.image)
    assert ok
    return buf.tobytes(), {"frame": frame.index}


def _result(i: int) -> Result:
    return Result("cam", i, float(i), 64, 48, ModelRef("m", 0, "0" * 64), 1.0, Inference())


class Producer:
    """A pipeline stand-in: offers frames to the tap as fast as it can, counting them."""

    def __init__(self, tap: ViewTap, size: tuple[int, int] = (64, 48)) -> None:
        self.tap = tap
        self.size = size
        self.frames = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-producer")

    def _run(self) -> None:
        w, h = self.size
        # noise: JPEGs of a few hundred kB, so a slow reader's socket buffers fill quickly
        image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        while not self.stop.is_set():
            if self.tap.wanted():
                self.tap.offer(Frame(self.frames, 0.0, image=image), _result(self.frames))
            self.frames += 1
            time.sleep(0.001)

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def view() -> Iterator[tuple[ViewServer, ViewTap]]:
    tap = ViewTap("cam", _render, max_fps=20)
    srv = ViewServer(ViewConfig(enabled=True, port=0, max_clients=4), TOKEN,
                     lambda: {"cam": tap}, lambda: {"device": "d", "pipelines": []})
    srv.start()
    yield srv, tap
    srv.stop()
    tap.close()


def _get(port: int, path: str, headers: dict[str, str] | None = None,
         host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/", "/api/state", "/snapshot/cam.jpg", "/stream/cam.mjpg"])
@pytest.mark.parametrize("auth", [None, "?token=wrong", "bearer-wrong"])
def test_wrong_or_missing_token_gets_401_and_no_image(view: Any, path: str,
                                                      auth: str | None) -> None:
    srv, _ = view
    headers = {"Authorization": "Bearer wrong"} if auth == "bearer-wrong" else {}
    url = path + (auth if auth and auth.startswith("?") else "")
    status, hdrs, body = _get(srv.port, url, headers)
    assert status == 401
    assert b"\xff\xd8" not in body and not hdrs.get("Content-Type", "").startswith("image")
    assert srv.unauthorized >= 1


def test_token_in_header_or_query_gets_the_image(view: Any) -> None:
    srv, tap = view
    with Producer(tap):
        status, hdrs, body = _get(srv.port, "/snapshot/cam.jpg",
                                  {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and hdrs["Content-Type"] == "image/jpeg"
        assert body[:2] == b"\xff\xd8"
        status, _, body = _get(srv.port, f"/snapshot/cam.jpg?token={TOKEN}")
        assert status == 200 and body[:2] == b"\xff\xd8"
        status, _, body = _get(srv.port, f"/?token={TOKEN}")
        assert status == 200 and b"<html" in body
        status, _, body = _get(srv.port, f"/api/state?token={TOKEN}")
        assert json.loads(body)["device"] == "d"
        assert _get(srv.port, f"/stream/nope.mjpg?token={TOKEN}")[0] == 404
        assert _get(srv.port, f"/snapshot/cam.mjpg?token={TOKEN}")[0] == 404


def test_no_viewer_no_cost_and_a_rate_limit_while_watched(view: Any) -> None:
    _, tap = view
    with Producer(tap) as producer:
        time.sleep(0.3)
        assert tap.rendered == 0 and not tap.wanted()  # nobody watches: nothing is taken
        with tap.watch():
            first = tap.wait_new(0, 30)
            assert first is not None
            time.sleep(0.5)
        rendered = tap.rendered
        assert producer.frames > 5 * rendered  # rate-limited: most frames never offered


def test_a_busy_renderer_drops_frames_instead_of_queueing() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def slow_render(frame: Frame, result: Result) -> tuple[bytes, dict[str, Any]]:
        gate.wait(10)
        seen.append(frame.index)
        return b"\xff\xd8", {"frame": frame.index}

    tap = ViewTap("cam", slow_render, max_fps=1000)
    try:
        with tap.watch():
            image = np.zeros((4, 4, 3), np.uint8)
            tap.offer(Frame(0, 0.0, image=image), _result(0))
            while tap._slot is not None:  # the renderer took frame 0 and now blocks
                time.sleep(0.01)
            for i in range(1, 6):
                tap.offer(Frame(i, 0.0, image=image), _result(i))
            gate.set()
            assert tap.wait_new(1, 10) is not None
        assert seen == [0, 5]  # frames 1..4 were replaced by newer ones, never rendered
    finally:
        tap.close()


def test_a_frame_whose_redaction_fails_is_not_shown(view: Any) -> None:
    _, tap = view
    with tap.watch():
        bad = np.full((48, 64, 3), 13, np.uint8)
        tap.offer(Frame(0, 0.0, image=bad), _result(0))
        assert tap.wait_new(0, 1.0) is None
        assert tap.refused == 1
        good = np.full((48, 64, 3), 100, np.uint8)
        tap._next_offer = 0.0
        tap.offer(Frame(1, 0.0, image=good), _result(1))
        got = tap.wait_new(0, 5.0)
        assert got is not None and got[0] == 1


def test_stream_is_mjpeg_of_fresh_frames(view: Any) -> None:
    srv, tap = view
    with Producer(tap):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        sock.sendall(f"GET /stream/cam.mjpg?token={TOKEN} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while data.count(b"\xff\xd9") < 3:
            chunk = sock.recv(65536)
            assert chunk, "stream ended"
            data += chunk
        sock.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert "multipart/x-mixed-replace; boundary=edge-agent-frame" in head
    assert data.count(b"--edge-agent-frame") >= 3


def test_idle_connections_and_a_slow_reader_do_not_stop_the_producer(
        view: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 idle connections and a client reading one byte a second: the producer keeps its
    pace (the figures with and without are in the issue note; no timing is asserted here),
    extra connections get 503 at once, and the idle ones are closed after the idle timeout."""
    srv, tap = view
    monkeypatch.setattr(server_mod._Handler, "timeout", 1.0)
    monkeypatch.setattr(server_mod, "WRITE_TIMEOUT_S", 1.0)
    with Producer(tap, (640, 480)) as producer:
        slow = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        slow.sendall(f"GET /stream/cam.mjpg?token={TOKEN} HTTP/1.0\r\n\r\n".encode())
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                for _ in range(50)]
        before = producer.frames
        deadline = time.monotonic() + 60  # against hangs (a loaded machine is slow)
        busy_seen = False
        while time.monotonic() < deadline and not (busy_seen and srv.streaming == 0):
            slow.recv(1)  # one byte a second
            time.sleep(1.0)
            busy_seen = srv.busy > 0
        assert srv.busy > 0  # over the bound: refused at once (others timed out idle)
        assert srv.streaming == 0  # the slow reader was dropped (write timeout)
        assert producer.frames > before  # the producer never waited for anyone
        # the idle connections were closed by the server (EOF) or refused with 503
        for s in idle:
            s.settimeout(5)
            data = s.recv(1024)
            assert data == b"" or data.startswith(b"HTTP/1.0 503") or data.startswith(
                b"HTTP/1.0 408")
            s.close()
        slow.close()
        # and the view serves again
        status, _, body = _get(srv.port, f"/snapshot/cam.jpg?token={TOKEN}")
        assert status == 200 and body[:2] == b"\xff\xd8"


def test_token_sources(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text(TOKEN + "\n")
    assert load_token(ViewConfig(token_file=f)) == TOKEN
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "view-token").write_text(TOKEN)
    assert load_token(ViewConfig(), {"CREDENTIALS_DIRECTORY": str(creds)}) == TOKEN
    assert load_token(ViewConfig(), {}) is None
    f.write_text("short")
    with pytest.raises(ConfigError, match="short token"):
        load_token(ViewConfig(token_file=f))
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(ViewConfig(token_file=tmp_path / "missing"))


def test_off_loopback_without_token_is_a_config_error(tmp_path: Path) -> None:
    from edge_agent.config import make_config
    from edge_agent.preflight import check_view

    with pytest.raises(ConfigError, match="not a loopback address"):
        ViewServer(ViewConfig(enabled=True, bind="0.0.0.0", port=0), None,
                   dict, dict)
    cfg = make_config(view={"enabled": True, "bind": "0.0.0.0"})
    problems = [f for f in check_view(cfg) if f.status == "fail"]
    assert problems and problems[0].key == ("view", "bind")
    assert problems[0].detail.startswith("0.0.0.0 is not a loopback")


NETNS_CHILD = r"""
import http.client, socket, sys, threading
sys.path.insert(0, sys.argv[1])
from edge_agent.config import ViewConfig
from edge_agent.view.server import ViewServer
TOKEN = sys.argv[2]
def get(host, port, path):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", path); r = c.getresponse(); return r.status, r.read()
# default bind: loopback only; the namespace's other address is refused
srv = ViewServer(ViewConfig(enabled=True, port=0), None, dict, lambda: {"pipelines": []})
srv.start()
try:
    socket.create_connection(("10.77.0.1", srv.port), timeout=2).close()
    print("default-bind: reachable on 10.77.0.1")
except ConnectionRefusedError:
    print("default-bind: refused on 10.77.0.1")
print("default-bind loopback:", get("127.0.0.1", srv.port, "/api/state")[0])
srv.stop()
# bound elsewhere: the token is required on every request
srv = ViewServer(ViewConfig(enabled=True, bind="10.77.0.1", port=0), TOKEN, dict,
                 lambda: {"pipelines": []})
srv.start()
print("elsewhere no token:", get("10.77.0.1", srv.port, "/api/state")[0])
print("elsewhere token:", get("10.77.0.1", srv.port, "/api/state?token=" + TOKEN)[0])
srv.stop()
"""


def test_other_addresses_in_a_network_namespace(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    setup = "ip link set lo up && ip addr add 10.77.0.1/32 dev lo"
    probe = subprocess.run([unshare or "unshare", "-rn", "sh", "-c", setup],
                           capture_output=True, text=True) if unshare else None
    if probe is None or probe.returncode != 0:
        msg = f"no network namespace here ({probe.stderr.strip() if probe else 'no unshare'})"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    script = tmp_path / "child.py"
    script.write_text(NETNS_CHILD)
    out = subprocess.run(
        [unshare, "-rn", "sh", "-c", f'{setup} && exec "$0" "$@"', sys.executable,
         str(script), str(REPO), TOKEN], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "default-bind: refused on 10.77.0.1" in lines
    assert "default-bind loopback: 200" in lines
    assert "elsewhere no token: 401" in lines
    assert "elsewhere token: 200" in lines
