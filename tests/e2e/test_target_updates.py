"""Model updates with one file per execution target, on a real agent with the real test
delegate (tests/delegate) as target ``vendor`` before ``cpu``.

The manifest carries the CPU model (top level) and files for ``vendor`` and ``edgetpu``; the
device has no ``edgetpu`` target, so that file (whose URL would fail) is never fetched. Each
file is verified and validated on its own target, and which file each target loads is read from
the agent's own log lines (``target <name>: loaded <file>``): the vendor's file never runs
on the CPU, not even after a failover.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge_agent.default_models import default_models_dir
from edge_agent.updater.manifest import TargetFile, build_manifest
from edge_agent.updater.store import sha256_file
from tests.broker import Mosquitto
from tests.delegate import TestDelegate
from tests.e2e.update_harness import PIPELINE, UpdateDevice, write_scene_video

pytestmark = [pytest.mark.slow]


def _variant(src: Path, out: Path, tag: bytes) -> Path:
    """The same model with a tag appended (TFLite ignores trailing bytes): other sha256."""
    out.write_bytes(src.read_bytes() + tag)
    return out


def _device(tmp_path: Path, broker: Mosquitto, d: TestDelegate) -> tuple[UpdateDevice, Path]:
    model = default_models_dir() / "face_detection_short_range.tflite"
    if not model.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    configured = shutil.copy2(model, tmp_path / "face.tflite")
    video = write_scene_video(tmp_path / "scene.avi", 30)
    dev = UpdateDevice(tmp_path, broker, Path(configured), decoder="anchors", labels=None,
                       video=video, fps=10)
    cfg = yaml.safe_load(dev.config_path.read_text())
    cfg["pipelines"][0]["model"].update({
        "threads": 1, "reprobe_s": 0.3, "reprobe_max_s": 1.0,
        "targets": [{"delegate": str(d.path), "name": "vendor", "options": d.options()},
                    "cpu"]})
    dev.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dev, Path(configured)


def _send(dev: UpdateDevice, manifest: dict[str, Any], main: Path,
          target_data: dict[str, Path]) -> str:
    rid = uuid.uuid4().hex
    command = {"request_id": rid, "pipeline": PIPELINE, "manifest": manifest,
               "data": base64.b64encode(main.read_bytes()).decode(),
               "target_data": {n: base64.b64encode(p.read_bytes()).decode()
                               for n, p in target_data.items()}}
    assert dev.sub.publish(f"{dev.prefix}/cmd/model/update", json.dumps(command).encode())
    return rid


def _loaded(log: str, sha: str) -> list[str]:
    """The target of every ``target TARGET: loaded <sha>.tflite`` (or ``.part``) line."""
    return re.findall(rf"target (\S+): loaded {sha}\.(?:tflite|part)\b", log)


def test_each_target_gets_its_own_file_and_only_its_own(
        tmp_path: Path, broker: Mosquitto, test_delegate: TestDelegate) -> None:
    dev, configured = _device(tmp_path, broker, test_delegate)
    cpu_v1 = _variant(configured, tmp_path / "cpu_v1.tflite", b"cpu-v1")
    vendor_v1 = _variant(configured, tmp_path / "vendor_v1.tflite", b"vendor-v1")
    tpu_v1 = _variant(configured, tmp_path / "tpu_v1.tflite", b"edgetpu-v1")
    sha_cpu, sha_vendor, sha_tpu = (sha256_file(p) for p in (cpu_v1, vendor_v1, tpu_v1))
    manifest = build_manifest(
        name="face", version=1, sha256=sha_cpu, size=cpu_v1.stat().st_size, key=dev.key,
        targets={"vendor": TargetFile(sha_vendor, vendor_v1.stat().st_size),
                 "edgetpu": TargetFile(sha_tpu, tpu_v1.stat().st_size,
                                       "http://127.0.0.1:9/never-fetched.tflite")})
    dev.start()
    try:
        dev.wait_results(3)
        since = dev.mark()
        rid = _send(dev, dict(manifest.raw), cpu_v1, {"vendor": vendor_v1})
        reply = dev.wait_reply(rid, since, timeout=90)
        assert reply["ok"], (reply, dev.log())
        dev.wait_results(3, since, sha=sha_cpu)
        store = dev.state_dir / "models" / PIPELINE
        assert (store / f"{sha_vendor}.tflite").is_file()
        assert not list(store.glob(f"{sha_tpu}*"))  # the device has no edgetpu target
        assert list((store / "staging").glob(f"{sha_tpu}*")) == []
        # the vendor's file failing over: the CPU must take the top-level file
        test_delegate.set("fail_invoke")
        dev.wait("the failover", lambda: "now serving on target cpu" in dev.log(), 60)
        since = dev.mark()
        dev.wait_results(3, since, sha=sha_cpu)
        test_delegate.set("ok")
        dev.wait("the return", lambda: "now serving on target vendor (was cpu)" in dev.log(), 60)
        log = dev.log()
    finally:
        dev.close()
    assert "not downloading the files for targets edgetpu" in log
    vendor_loads = _loaded(log, sha_vendor)
    cpu_loads = _loaded(log, sha_cpu)
    assert vendor_loads and all(t == "vendor" for t in vendor_loads), log
    assert cpu_loads and all(t == "cpu" for t in cpu_loads), log
    assert _loaded(log, sha_tpu) == []


def test_a_target_file_that_does_not_run_on_its_target_rejects_the_update(
        tmp_path: Path, broker: Mosquitto, test_delegate: TestDelegate) -> None:
    dev, configured = _device(tmp_path, broker, test_delegate)
    other = default_models_dir() / "face_detection_full_range_sparse.tflite"  # 192x192 input
    if not other.exists():
        pytest.skip("default model missing (edge-agent models fetch)")
    cpu_v1 = _variant(configured, tmp_path / "cpu_v1.tflite", b"cpu-v1")
    manifest = build_manifest(
        name="face", version=1, sha256=sha256_file(cpu_v1), size=cpu_v1.stat().st_size,
        key=dev.key, targets={"vendor": TargetFile(sha256_file(other), other.stat().st_size)})
    dev.start()
    try:
        dev.wait_results(3)
        since = dev.mark()
        rid = _send(dev, dict(manifest.raw), cpu_v1, {"vendor": other})
        reply = dev.wait_reply(rid, since, timeout=90)
        assert not reply["ok"]
        assert "target vendor" in reply["error"] and "tensors" in reply["error"], reply
        rejected = dev.wait_state("rejected", since)
        assert rejected["active"]["version"] == 0
        dev.wait_results(3, dev.mark(), sha=dev.configured_sha)
    finally:
        dev.close()
