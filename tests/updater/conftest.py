"""Fixtures for updater tests: keys, a local HTTP server with Range support, and a small agent
stand-in whose validate hook uses the real runtime and decoders."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config import UpdatesConfig
from edge_agent.errors import UpdateError
from edge_agent.signing import generate_key_pair, load_private_key, load_public_keys
from edge_agent.updater.manifest import Manifest, build_manifest
from edge_agent.updater.store import ModelStore
from edge_agent.updater.updater import ModelUpdater, UpdateHooks
from tests.conftest import shared_model


@dataclass
class Keys:
    dir: Path
    private: Any
    public: dict[str, Any]

    def manifest(self, model: Path, *, name: str = "detector", version: int = 1,
                 url: str | None = None, labels: str | None = None, **kw: Any) -> Manifest:
        data = model.read_bytes()
        fields: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        fields.update({k: kw.pop(k) for k in ("sha256", "size") if k in kw})
        return build_manifest(name=name, version=version, key=self.private, url=url,
                              labels=labels, **fields, **kw)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    priv, pub, _ = generate_key_pair(tmp_path / "keys")
    return Keys(tmp_path / "keys", load_private_key(priv), load_public_keys([pub]))


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/oversize/"):
            body = self.server.files.get(self.path.removeprefix("/oversize"))
            if body is not None:
                body = body + b"\0" * 4096  # more than the manifest allows
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and self.server.ranges:
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        cut = self.server.cut_after.pop(self.path, None)
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if cut is not None:  # send some, then drop the connection
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ranges = True
        self.cut_after: dict[str, int] = {}

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def http_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="test-http")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def hanging_url() -> Iterator[str]:
    """A server that accepts TCP connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/model.tflite"
    finally:
        sock.close()


def real_validate(decoder: str) -> Any:
    """The validate hook an agent would give: real runtime, real decoder, warm-up, finite."""
    from edge_agent.decoders.factory import create_decoder
    from edge_agent.decoders.labels import load_labels
    from edge_agent.runtime.interpreter import load_runtime

    def validate(path: Path, labels: Path | None, **_: Any) -> None:
        runtime = load_runtime(path, threads=1)
        try:
            create_decoder(decoder, runtime.signature, load_labels(labels), {}, 0.5)
            inputs = [np.zeros(s.shape, dtype=s.dtype) for s in runtime.signature.inputs]
            for out in runtime.infer(inputs):
                if out.dtype.kind == "f" and not np.isfinite(out).all():
                    raise UpdateError("warm-up gave non-finite outputs (NaN or inf)")
        finally:
            runtime.close()

    return validate


@dataclass
class AgentDouble:
    """What the agent does for the updater, without the pipeline: records every call."""

    active_model: tuple[str, int, str]
    validate: Any
    states: list[dict[str, Any]] = field(default_factory=list)
    replies: list[tuple[str, bool, str | None]] = field(default_factory=list)
    swaps: list[tuple[Path, Path | None, Manifest | None]] = field(default_factory=list)
    replied: threading.Condition = field(default_factory=threading.Condition)

    def hooks(self) -> UpdateHooks:
        return UpdateHooks(active=lambda: self.active_model, validate=self.validate,
                           swap=self._swap, publish_state=self._publish, reply=self._reply)

    def _swap(self, path: Path, labels: Path | None, manifest: Manifest | None) -> None:
        assert path.exists()
        self.swaps.append((path, labels, manifest))
        if manifest is None:
            self.active_model = ("configured", 0, hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            self.active_model = (manifest.name, manifest.version, manifest.sha256)

    def _publish(self, state: dict[str, Any]) -> None:
        with self.replied:
            self.states.append(state)
            self.replied.notify_all()

    def _reply(self, rid: str, ok: bool, error: str | None) -> None:
        with self.replied:
            self.replies.append((rid, ok, error))
            self.replied.notify_all()

    def wait_reply(self, rid: str, timeout: float = 30.0) -> tuple[str, bool, str | None]:
        with self.replied:
            ok = self.replied.wait_for(lambda: any(r[0] == rid for r in self.replies), timeout)
        assert ok, f"no reply to {rid}; states: {[s['state'] for s in self.states]}"
        return next(r for r in self.replies if r[0] == rid)

    def wait_state(self, state: str, timeout: float = 30.0) -> dict[str, Any]:
        with self.replied:
            ok = self.replied.wait_for(lambda: any(s["state"] == state for s in self.states),
                                       timeout)
        assert ok, f"no {state}; states: {[s['state'] for s in self.states]}"
        return next(s for s in self.states if s["state"] == state)


@dataclass
class Rig:
    agent: AgentDouble
    store: ModelStore
    updater: ModelUpdater
    configured: Path


def make_rig(tmp_path: Path, keys: Keys, *, decoder: str = "anchors",
             configured: Path | None = None, **cfg: Any) -> Rig:
    # default models (models/, on every clone): short-range face detector configured, the
    # full-range one sent as the update (both the anchors decoder, different files)
    configured = configured or shared_model("face_detection_short_range.tflite")
    store = ModelStore(tmp_path / "state" / "models" / "door")
    active = store.resolve_active(configured, shared_model("face.txt"))
    agent = AgentDouble(("configured", 0, active.sha256), real_validate(decoder))
    config = UpdatesConfig(**{"fetch_timeout_s": 1.0, "watch_seconds": 0.0,
                              "watch_inferences": 0, **cfg})
    updater = ModelUpdater("door", config, store, keys.public, agent.hooks())
    updater.start(active)
    return Rig(agent, store, updater, configured)


@pytest.fixture
def rig(tmp_path: Path, keys: Keys) -> Iterator[Rig]:
    r = make_rig(tmp_path, keys)
    try:
        yield r
    finally:
        r.updater.stop()
