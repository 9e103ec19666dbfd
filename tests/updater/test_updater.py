"""The update state machine: good updates, the corpus of bad ones, watch and rollback."""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.signing import generate_key_pair, load_private_key, sign_object
from edge_agent.updater.manifest import SCHEMA
from tests.conftest import shared_model
from tests.updater.conftest import Keys, Rig, make_rig
from tests.updater.tiny_models import write_nan_model

NEW_SSD = "face_detection_full_range_sparse.tflite"  # a default model (models/)


def _send(rig: Rig, manifest: dict[str, Any] | str, rid: str, **extra: Any) -> tuple[bool, str]:
    assert rig.updater.handle_update({"request_id": rid, "pipeline": "door",
                                      "manifest": manifest, **extra})
    _, ok, error = rig.agent.wait_reply(rid)
    return ok, error or ""


def _file_url(path: Path) -> str:
    return path.resolve().as_uri()


def test_good_update_goes_active_and_is_stored(rig: Rig, keys: Keys, tmp_path: Path) -> None:
    model = shared_model(NEW_SSD)
    labels = shared_model("face.txt").read_text()
    m = keys.manifest(model, version=3, url=_file_url(model), labels=labels)
    ok, error = _send(rig, dict(m.raw), "r1")
    assert ok, error
    states = [s["state"] for s in rig.agent.states[1:]]  # after the start-up state
    assert states[0] == "downloading" and states[-1] == "active"
    assert {"verifying", "validating"} <= set(states)
    final = rig.agent.states[-1]
    assert final["sha256"] == m.sha256 and final["active"]["sha256"] == m.sha256
    assert final["previous"]["version"] == 0
    path, labels_path, manifest = rig.agent.swaps[-1]
    assert path == rig.store.model_path(m.sha256) and manifest == m
    assert labels_path is not None and labels_path.read_text() == labels
    again = rig.store.resolve_active(rig.configured)
    assert (again.source, again.sha256, again.version) == ("current", m.sha256, 3)


def test_inline_update(rig: Rig, keys: Keys) -> None:
    model = shared_model(NEW_SSD)
    m = keys.manifest(model, version=1)
    ok, error = _send(rig, m.to_json(), "r1",
                      data=base64.b64encode(model.read_bytes()).decode())
    assert ok, error
    assert rig.agent.active_model == ("detector", 1, m.sha256)


def _corpus(keys: Keys, tmp: Path, http_server: Any, hanging_url: str,
            ) -> dict[str, Callable[[], tuple[dict[str, Any], dict[str, Any], str]]]:
    """name -> () -> (manifest object, command extras, expected reason fragment)."""
    good = shared_model(NEW_SSD)
    data = good.read_bytes()

    def copy_with(name: str, payload: bytes) -> Path:
        p = tmp / name
        p.write_bytes(payload)
        return p

    def truncated() -> Any:
        p = copy_with("trunc.tflite", data[: len(data) // 2])
        m = keys.manifest(good, version=2, url=_file_url(p))
        return dict(m.raw), {}, "size mismatch"

    def flipped() -> Any:
        bad = bytearray(data)
        bad[len(bad) // 3] ^= 0x01
        p = copy_with("flip.tflite", bytes(bad))
        return dict(keys.manifest(good, version=2, url=_file_url(p)).raw), {}, "sha256 mismatch"

    def wrong_sha() -> Any:
        m = keys.manifest(good, version=2, url=_file_url(good), sha256="0" * 64)
        return dict(m.raw), {}, "sha256 mismatch"

    def wrong_size() -> Any:
        m = keys.manifest(good, version=2, url=_file_url(good), size=len(data) + 100)
        return dict(m.raw), {}, "size mismatch"

    def unsigned() -> Any:
        raw = dict(keys.manifest(good, version=2, url=_file_url(good)).raw)
        del raw["signature"], raw["key_id"]
        return raw, {}, "unsigned"

    def unknown_key() -> Any:
        priv, _, _ = generate_key_pair(tmp / "other")
        raw = sign_object(dict(keys.manifest(good, version=2, url=_file_url(good)).raw),
                          load_private_key(priv))
        return raw, {}, "unknown key"

    def other_fields() -> Any:
        raw = dict(keys.manifest(good, version=2, url=_file_url(good)).raw)
        raw["version"] = 9
        return raw, {}, "bad signature"

    def older() -> Any:
        return dict(keys.manifest(good, version=0, url=_file_url(good)).raw), {}, "not above"

    def custom_op() -> Any:
        bad = shared_model("invalid_model_unresolved_custom_op.tflite")
        return dict(keys.manifest(bad, version=2, url=_file_url(bad)).raw), {}, "custom op"

    def classification() -> Any:
        cls = shared_model("mobilenet_v1_0.25_128_quant.tflite")
        return dict(keys.manifest(cls, version=2, url=_file_url(cls)).raw), {}, \
            "validation failed"

    def not_found() -> Any:
        http_server.files["/there.tflite"] = data
        m = keys.manifest(good, version=2, url=http_server.url("/missing.tflite"))
        return dict(m.raw), {}, "HTTP 404"

    def hangs() -> Any:
        return dict(keys.manifest(good, version=2, url=hanging_url).raw), {}, "timed out"

    def over_cap() -> Any:
        m = keys.manifest(good, version=2, url=_file_url(good))
        return dict(m.raw), {}, "max_size_bytes"

    def server_sends_more() -> Any:
        http_server.files["/m.tflite"] = data
        m = keys.manifest(good, version=2, url=http_server.url("/oversize/m.tflite"))
        return dict(m.raw), {}, "over the manifest size"

    def traversal() -> Any:
        raw = dict(keys.manifest(good, version=2, url=_file_url(good)).raw)
        raw["name"] = "../../etc/cron.d/x"
        return sign_object(raw, keys.private), {}, "invalid name"

    def inline_too_big() -> Any:
        m = keys.manifest(good, version=2)
        blob = base64.b64encode(data + b"x" * 1000).decode()
        return dict(m.raw), {"data": blob}, "larger than the manifest size"

    def no_source() -> Any:
        return dict(keys.manifest(good, version=2).raw), {}, "no url"

    def wrong_schema() -> Any:
        raw = dict(keys.manifest(good, version=2, url=_file_url(good)).raw)
        raw["schema"] = SCHEMA.replace("@1", "@9")
        return sign_object(raw, keys.private), {}, "schema"

    return {f.__name__: f for f in (
        truncated, flipped, wrong_sha, wrong_size, unsigned, unknown_key, other_fields, older,
        custom_op, classification, not_found, hangs, over_cap, server_sends_more, traversal,
        inline_too_big, no_source, wrong_schema)}


CASES = ["truncated", "flipped", "wrong_sha", "wrong_size", "unsigned", "unknown_key",
         "other_fields", "older", "custom_op", "classification", "not_found", "hangs",
         "over_cap", "server_sends_more", "traversal", "inline_too_big", "no_source",
         "wrong_schema"]


@pytest.mark.parametrize("case", CASES)
def test_bad_update_is_rejected_and_previous_keeps_serving(
        case: str, tmp_path: Path, keys: Keys, http_server: Any, hanging_url: str) -> None:
    cap = {"max_size_bytes": 500_000} if case == "over_cap" else {}  # the update: 677 kB
    rig = make_rig(tmp_path, keys, **cap)
    try:
        before = rig.agent.active_model
        manifest, extra, reason = _corpus(keys, tmp_path, http_server, hanging_url)[case]()
        ok, error = _send(rig, manifest, case, **extra)
        assert not ok
        assert reason in error, error
        final = rig.agent.states[-1]
        assert final["state"] == "rejected" and reason in final["reason"]
        assert final["active"]["sha256"] == before[2]
        assert rig.agent.active_model == before and rig.agent.swaps == []
        assert rig.store.read_pointer("current") is None  # still the configured model
        served = rig.store.resolve_active(rig.configured)
        assert served.sha256 == before[2] and served.source == "configured"
        # nothing half-downloaded or rejected was installed
        assert not list(rig.store.dir.glob("*.tflite"))
        if case not in ("hangs",):
            assert not list(rig.store.staging.iterdir())
    finally:
        rig.updater.stop()


def test_nan_model_is_rejected_by_the_warm_up(tmp_path: Path, keys: Keys) -> None:
    nan = write_nan_model(tmp_path / "nan.tflite")
    rig = make_rig(tmp_path, keys, decoder="raw")
    try:
        ok, error = _send(rig, dict(keys.manifest(nan, version=1, url=_file_url(nan)).raw), "n")
        assert not ok and "non-finite" in error
        assert rig.agent.states[-1]["state"] == "rejected" and rig.agent.swaps == []
    finally:
        rig.updater.stop()


def test_watch_failures_roll_back_automatically(tmp_path: Path, keys: Keys) -> None:
    rig = make_rig(tmp_path, keys, watch_inferences=10, watch_seconds=30.0,
                   max_failure_ratio=0.2)
    try:
        model = shared_model(NEW_SSD)
        m = keys.manifest(model, version=1, url=_file_url(model))
        ok, _ = _send(rig, dict(m.raw), "w")
        assert ok and rig.agent.active_model[2] == m.sha256
        assert rig.store.read_pointer("current").trial  # type: ignore[union-attr]
        assert not rig.updater.handle_update({"request_id": "busy", "manifest": {}})
        assert "busy" in (rig.agent.wait_reply("busy")[2] or "")
        rig.updater.record_inference(True, True, sha256="f" * 64)  # another model: ignored
        for i in range(4):
            rig.updater.record_inference(ok=i != 1, finite=i != 2, sha256=m.sha256)
        rig.updater.record_inference(False, True)
        state = rig.agent.wait_state("rolled_back", timeout=10)
        assert state["sha256"] == m.sha256
        assert "3 of 5 inferences failed" in state["reason"]
        assert "non-finite" in state["reason"]
        assert rig.agent.active_model == ("configured", 0, state["active"]["sha256"])
        assert rig.agent.swaps[-1][0] == rig.configured
        assert rig.store.read_pointer("current").target == "configured"  # type: ignore[union-attr]
        assert rig.store.resolve_active(rig.configured).path == rig.configured
    finally:
        rig.updater.stop()


def test_watch_passes_then_manual_rollback(tmp_path: Path, keys: Keys) -> None:
    rig = make_rig(tmp_path, keys, watch_inferences=5, watch_seconds=30.0)
    try:
        model = shared_model(NEW_SSD)
        m = keys.manifest(model, version=1, url=_file_url(model))
        assert _send(rig, dict(m.raw), "a")[0]
        for _ in range(5):
            rig.updater.record_inference(True, True, sha256=m.sha256)
        rig.agent.wait_state("active")
        with rig.agent.replied:  # start-up, swap, watch passed
            rig.agent.replied.wait_for(
                lambda: [s["state"] for s in rig.agent.states].count("active") == 3, 10)
        assert not rig.store.read_pointer("current").trial  # type: ignore[union-attr]
        assert rig.updater.rollback("rb")
        _, ok, err = rig.agent.wait_reply("rb")
        assert ok, err
        assert rig.agent.states[-1]["state"] == "rolled_back"
        assert "manual rollback" in rig.agent.states[-1]["reason"]
        assert rig.agent.active_model[1] == 0
        assert rig.updater.rollback("rb2")
        _, ok, err = rig.agent.wait_reply("rb2")
        assert not ok and "no previous" in (err or "")
    finally:
        rig.updater.stop()


def test_downgrade_needs_config_and_signed_manifest(tmp_path: Path, keys: Keys) -> None:
    model = shared_model(NEW_SSD)
    other = shared_model("pose_detection.tflite")
    copy = tmp_path / "copy.tflite"
    shutil.copy(other, copy)
    copy.write_bytes(copy.read_bytes() + b"\0" * 16)  # a different file that still loads
    rig = make_rig(tmp_path, keys, allow_downgrade=True)
    try:
        assert _send(rig, dict(keys.manifest(model, version=5, url=_file_url(model)).raw),
                     "v5")[0]
        ok, err = _send(rig, dict(keys.manifest(copy, version=4, url=_file_url(copy)).raw), "4")
        assert not ok and "not above" in err
        m4 = keys.manifest(copy, version=4, url=_file_url(copy), allow_downgrade=True)
        ok, err = _send(rig, dict(m4.raw), "4b")
        assert ok, err
        assert rig.agent.active_model == ("detector", 4, hashlib.sha256(copy.read_bytes())
                                          .hexdigest())
    finally:
        rig.updater.stop()


def test_state_messages_fit_the_privacy_factory_and_schema(rig: Rig, keys: Keys) -> None:
    from edge_agent.privacy import messages, schemas
    from edge_agent.privacy.seal import new_seal

    model = shared_model(NEW_SSD)
    _send(rig, dict(keys.manifest(model, version=1, url=_file_url(model)).raw), "ok")
    _send(rig, dict(keys.manifest(model, version=2, url="http://127.0.0.1:9/x").raw), "bad")
    seen = set()
    for state in rig.agent.states:
        msg = messages.model_state(new_seal(), device="dev-1", **state)
        schemas.validate("model_state", dict(msg.payload))
        seen.add(state["state"])
    assert seen == {"active", "downloading", "verifying", "validating", "rejected"}


def test_restart_during_the_watch_starts_on_the_previous_model(tmp_path: Path,
                                                               keys: Keys) -> None:
    from edge_agent.config import UpdatesConfig
    from edge_agent.updater.store import ModelStore
    from edge_agent.updater.updater import ModelUpdater
    from tests.updater.conftest import AgentDouble, real_validate

    rig = make_rig(tmp_path, keys, watch_inferences=50, watch_seconds=60.0)
    try:
        model = shared_model(NEW_SSD)
        m = keys.manifest(model, version=1, url=_file_url(model))
        assert _send(rig, dict(m.raw), "t")[0]
        assert rig.store.read_pointer("current").trial  # type: ignore[union-attr]
        # what a new agent process finds after a kill -9 now
        store = ModelStore(rig.store.dir)
        active = store.resolve_active(rig.configured)
        assert active.path == rig.configured and "trial" in (active.reason or "")
        agent = AgentDouble(("configured", 0, active.sha256), real_validate("anchors"))
        updater = ModelUpdater("door", UpdatesConfig(), store, keys.public, agent.hooks())
        updater.start()
        updater.stop()
        state = agent.states[0]
        assert state["state"] == "rolled_back" and state["sha256"] == m.sha256
        assert state["active"]["sha256"] == active.sha256 and "trial" in state["reason"]
    finally:
        rig.updater.stop()
