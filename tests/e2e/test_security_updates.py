"""Attacks on the model update path against the real daemon and a real mosquitto (issue 12).

Each test replays what an attacker with publish rights on the broker did in the review and
checks that the daemon refuses it, with the reason in the command reply and in its log:

* a replayed old signed manifest after a signed rollback (the anti-rollback floor, kept
  across a restart); a manifest signed for another pipeline; a model of another decoder kind
  under ``decoder: auto``; a manifest naming another decoder;
* a model planted in the store (unsigned, version 999, ``current`` pointing at it): not
  served at start, and it does not block a later legitimate update;
* ``updates.enabled: false``;
* the unsigned ``url`` override: ``file:`` (a file oracle), http (SSRF), a redirect to
  ``ftp:``, a FIFO, a server that trickles bytes.
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.default_models import ensure_default_models, labels_path
from edge_agent.signing import sign_command
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import sha256_file, write_atomic
from tests.broker import Mosquitto
from tests.conftest import shared_model
from tests.e2e.update_harness import PIPELINE, UpdateDevice, write_scene_video

pytestmark = pytest.mark.slow

SHORT = "face_detection_short_range"
FULL = "face_detection_full_range_sparse"
NO_WATCH = {"watch_inferences": 0, "watch_seconds": 0}


@pytest.fixture(scope="module")
def face_models() -> dict[str, Path]:
    return ensure_default_models()


def _device(tmp: Path, broker: Mosquitto, models: dict[str, Path], *, decoder: str = "auto",
            updates: dict[str, Any] | None = None) -> UpdateDevice:
    short = models[SHORT]
    video = write_scene_video(tmp / "scene.avi", 30)
    return UpdateDevice(tmp, broker, short, decoder=decoder, labels=labels_path(SHORT),
                        video=video, fps=15, updates={**NO_WATCH, **(updates or {})})


def _signed(dev: UpdateDevice, model: Path, version: int, **extra: Any) -> dict[str, Any]:
    url = extra.pop("url", None)
    m = build_manifest(name=extra.pop("name", "face"), version=version,
                       sha256=sha256_file(model), size=model.stat().st_size, key=dev.key,
                       url=url, extra=extra or None)
    return dict(m.raw)


def _refused(dev: UpdateDevice, rid: str, since: int, *words: str) -> str:
    reply = dev.wait_reply(rid, since)
    assert reply["ok"] is False, reply
    error = str(reply["error"])
    for word in words:
        assert word in error, (error, dev.log())
    dev.wait(f"the refusal in the log ({words[0]})", lambda: words[0] in dev.log(), 30)
    return error


def _serving(dev: UpdateDevice, since: int) -> str:
    res = dev.wait_results(3, since=since)
    return str(res[-1]["model"]["sha256"])


def test_replay_after_rollback_wrong_target_and_decoder(tmp_path: Path, broker: Mosquitto,
                                                        face_models: dict[str, Path]) -> None:
    full = face_models[FULL]
    dev = _device(tmp_path, broker, face_models)
    try:
        dev.start()
        dev.wait_results(3, sha=dev.configured_sha)
        v7 = _signed(dev, full, 7)
        mark = dev.mark()
        rid = dev.send_update(v7, data=full)
        assert dev.wait_reply(rid, mark)["ok"], dev.log()
        dev.wait_results(3, since=mark, sha=v7["sha256"])

        mark = dev.mark()
        rolled = dev.cli("rollback", "--device", dev.device_id, "--pipeline", PIPELINE,
                         "--broker", dev.broker_arg, "--key", str(dev.key_path),
                         "--timeout", "30")
        assert rolled.returncode == 0, rolled.stdout + rolled.stderr + dev.log()
        dev.wait_results(3, since=mark, sha=dev.configured_sha)

        # the attack: the same signed v7 manifest again, no bytes (the store still has them)
        mark = dev.mark()
        rid = dev.send_update(v7)
        _refused(dev, rid, mark, "anti-rollback floor", "version 7 is not above 7")
        assert _serving(dev, dev.mark()) == dev.configured_sha

        # the floor survives a restart
        assert dev.agent is not None and dev.agent.terminate() == 0
        dev.start()
        mark = dev.mark()
        dev.wait_results(3, since=mark, sha=dev.configured_sha)
        rid = dev.send_update(v7, data=full)
        _refused(dev, rid, mark, "anti-rollback floor")

        # signed for another pipeline, device or group
        for extra, word in (({"pipeline": "garage"}, "pipeline garage"),
                            ({"device": "someone-else"}, "another device"),
                            ({"group": "lobby"}, "another group")):
            mark = dev.mark()
            rid = dev.send_update(_signed(dev, full, 8, **extra), data=full)
            _refused(dev, rid, mark, "wrong target", word)

        # a manifest that names another decoder kind
        mark = dev.mark()
        rid = dev.send_update(_signed(dev, full, 8, decoder="classification"), data=full)
        _refused(dev, rid, mark, "wrong decoder", "'anchors'")

        # a classifier under decoder: auto is not re-inferred as a classifier
        cls = shared_model("mobilenet_v1_0.25_128_quant.tflite")
        mark = dev.mark()
        rid = dev.send_update(_signed(dev, cls, 9), data=cls)
        _refused(dev, rid, mark, "validation failed", "decoder 'anchors' does not fit")
        assert _serving(dev, dev.mark()) == dev.configured_sha

        # the legitimate way back to those bytes: a new, higher version, bound to this target
        mark = dev.mark()
        rid = dev.send_update(_signed(dev, full, 8, pipeline=PIPELINE, device=dev.device_id,
                                      decoder="anchors"), data=full)
        assert dev.wait_reply(rid, mark)["ok"], dev.log()
        dev.wait_results(3, since=mark, sha=v7["sha256"])
    finally:
        dev.close()


def test_planted_model_is_not_served_and_does_not_block_updates(
        tmp_path: Path, broker: Mosquitto, face_models: dict[str, Path]) -> None:
    full = face_models[FULL]
    dev = _device(tmp_path, broker, face_models)
    try:
        store = dev.state_dir / "models" / PIPELINE
        store.mkdir(parents=True)
        sha = sha256_file(full)
        (store / f"{sha}.tflite").write_bytes(full.read_bytes())
        planted = {"schema": "edge-agent/model-manifest@1", "name": "planted", "version": 999,
                   "sha256": sha, "size": full.stat().st_size, "created": "", "key_id": "",
                   "signature": ""}
        write_atomic(store / f"{sha}.manifest.json", json.dumps(planted).encode())
        write_atomic(store / "current", f"{sha}\n".encode())

        mark = dev.mark()
        dev.start()
        dev.wait_results(3, since=mark, sha=dev.configured_sha)
        state = dev.wait_state("rolled_back", mark)
        assert "not trusted" in state["reason"] and state["sha256"] == sha, state
        assert state["active"]["sha256"] == dev.configured_sha
        assert "not trusted" in dev.log()

        mark = dev.mark()
        rid = dev.send_update(_signed(dev, full, 1), data=full)
        assert dev.wait_reply(rid, mark)["ok"], dev.log()
        dev.wait_results(3, since=mark, sha=sha)
    finally:
        dev.close()


def test_updates_disabled_are_refused(tmp_path: Path, broker: Mosquitto,
                                      face_models: dict[str, Path]) -> None:
    full = face_models[FULL]
    dev = _device(tmp_path, broker, face_models, updates={"enabled": False})
    try:
        dev.start()
        dev.wait_results(3, sha=dev.configured_sha)
        mark = dev.mark()
        rid = dev.send_update(_signed(dev, full, 1), data=full)
        _refused(dev, rid, mark, "updates are disabled", "updates.enabled: false")
        assert _serving(dev, dev.mark()) == dev.configured_sha
        assert not (dev.state_dir / "models" / PIPELINE / f"{sha256_file(full)}.tflite").exists()
    finally:
        dev.close()


class _Hostile(http.server.BaseHTTPRequestHandler):
    """``/redirect``: 302 to ftp://; ``/trickle``: one byte every 0.1 s; anything: counted."""

    server: _HostileServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/model.tflite")
            self.end_headers()
            return
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(self.server.size))
            self.end_headers()
            try:
                for _ in range(self.server.size):
                    if self.server.closing.wait(0.1):
                        return
                    self.wfile.write(b"\0")
                    self.wfile.flush()
            except OSError:
                return
            return
        self.send_error(404)


class _HostileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, size: int) -> None:
        super().__init__(("127.0.0.1", 0), _Hostile)
        self.paths: list[str] = []
        self.size = size
        self.closing = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture
def hostile(face_models: dict[str, Path]) -> Iterator[_HostileServer]:
    server = _HostileServer(face_models[FULL].stat().st_size)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_url_override_redirects_fifo_and_trickle(tmp_path: Path, broker: Mosquitto,
                                                 face_models: dict[str, Path],
                                                 hostile: _HostileServer) -> None:
    full = face_models[FULL]
    dev = _device(tmp_path, broker, face_models, updates={"download_deadline_s": 8})
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x" * 12345)
    try:
        dev.start()
        dev.wait_results(3, sha=dev.configured_sha)
        signed = _signed(dev, full, 1)

        # file oracle: refused before any file is looked at; the size is nowhere in the reply
        mark = dev.mark()
        rid = dev.send_update(signed, url=secret.as_uri())
        error = _refused(dev, rid, mark, "url override refused", "file: urls")
        assert "12345" not in error and "12345" not in json.dumps(dev.states(mark))
        # SSRF: an http url from a command is not fetched at all
        mark = dev.mark()
        rid = dev.send_update(signed, url=hostile.url("/probe"))
        _refused(dev, rid, mark, "url override refused", "only from the signed manifest")
        assert hostile.paths == []

        # the signed manifest's own url redirects to ftp: not followed
        mark = dev.mark()
        rid = dev.send_update(_signed(dev, full, 1, url=hostile.url("/redirect")))
        _refused(dev, rid, mark, "redirect refused", "'ftp'")
        assert hostile.paths == ["/redirect"]

        # a FIFO named by a signed file: url is refused at once, not waited on
        fifo = tmp_path / "model.fifo"
        os.mkfifo(fifo)
        mark = dev.mark()
        rid = dev.send_update(_signed(dev, full, 1, url=fifo.as_uri()))
        _refused(dev, rid, mark, "not a regular file")

        # a server trickling bytes is cut off by the whole-download deadline
        mark = dev.mark()
        t0 = time.monotonic()
        rid = dev.send_update(_signed(dev, full, 1, url=hostile.url("/trickle")))
        _refused(dev, rid, mark, "download too slow")
        assert time.monotonic() - t0 < 30
        # and the updater is free again
        mark = dev.mark()
        rid = dev.send_update(signed, data=full)
        assert dev.wait_reply(rid, mark)["ok"], dev.log()
        dev.wait_results(3, since=mark, sha=signed["sha256"])

        # a signed rollback during a trickled download is not answered "busy": it cancels
        # the download and rolls back at once
        mark = dev.mark()
        padded = tmp_path / "v2.tflite"  # other bytes than the active model
        padded.write_bytes(full.read_bytes() + b"\0" * 16)
        slow = dev.send_update(_signed(dev, padded, 2, url=hostile.url("/trickle")))
        dev.wait_state("downloading", mark)
        back = sign_command({"request_id": "rb-1", "command": "rollback", "device":
                             dev.device_id, "pipeline": PIPELINE}, dev.key)
        assert dev.sub.publish(f"{dev.prefix}/cmd/rollback", json.dumps(back).encode())
        reply = dev.wait_reply("rb-1", mark, timeout=20)
        assert reply["ok"] is True, (reply, dev.log())
        cancelled = dev.wait_reply(slow, mark)
        assert cancelled["ok"] is False and "cancelled" in cancelled["error"], cancelled
        assert "rollback rb-1 cancels the update in progress" in dev.log()
        dev.wait_results(3, since=dev.mark(), sha=dev.configured_sha)
    finally:
        dev.close()
