"""Benchmark: time from an update command to ``active`` for the 4.18 MB COCO SSD model, by
file:// URL, by http:// URL (local server) and inline (base64 in the command), with the real
validate hook (load, decoder fit, warm-up) used in the tests.

Run: ``.venv/bin/python -m tests.updater.bench_update [REPEATS]``
"""

from __future__ import annotations

import base64
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.config import UpdatesConfig
from edge_agent.signing import generate_key_pair, load_private_key, load_public_keys
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import ModelStore
from edge_agent.updater.updater import ModelUpdater
from tests.conftest import SHARED_MODELS
from tests.updater.conftest import AgentDouble, _Server, real_validate


def run_once(tmp: Path, mode: str, model: Path, configured: Path,
             server: _Server) -> dict[str, Any]:
    priv, pub, _ = generate_key_pair(tmp / "keys")
    key = load_private_key(priv)
    data = model.read_bytes()
    store = ModelStore(tmp / "models" / "door")
    active = store.resolve_active(configured)
    agent = AgentDouble(("configured", 0, active.sha256), real_validate("ssd"))
    stamps: list[tuple[str, float]] = []
    publish = agent.hooks().publish_state

    def stamp(state: dict[str, Any]) -> None:
        stamps.append((state["state"], time.perf_counter()))
        publish(state)

    hooks = agent.hooks()
    hooks = type(hooks)(hooks.active, hooks.validate, hooks.swap, stamp, hooks.reply)
    updater = ModelUpdater("door", UpdatesConfig(watch_inferences=0, watch_seconds=0), store,
                           load_public_keys([pub]), hooks)
    updater.start(active)
    url = {"file": model.resolve().as_uri(), "http": server.url("/m.tflite")}.get(mode)
    manifest = build_manifest(name="coco", version=1, sha256=hashlib.sha256(data).hexdigest(),
                              size=len(data), key=key, url=url)
    command: dict[str, Any] = {"request_id": "b", "pipeline": "door",
                               "manifest": dict(manifest.raw)}
    if mode == "inline":
        command["data"] = base64.b64encode(data).decode()
    payload = json.dumps(command).encode()  # what travels over MQTT
    t0 = time.perf_counter()
    updater.handle_update(json.loads(payload))
    _, ok, error = agent.wait_reply("b", 60)
    t1 = time.perf_counter()
    updater.stop()
    assert ok, error
    first = {s: t - t0 for s, t in reversed(stamps) if t >= t0}
    return {"total": t1 - t0, "payload": len(payload), **first}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    model = SHARED_MODELS / "coco_ssd_mobilenet_v1_1.0_quant.tflite"
    configured = SHARED_MODELS / "tf2_ssd_mobilenet_v2_320_coco_float.tflite"
    server = _Server()
    server.files["/m.tflite"] = model.read_bytes()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for mode in ("file", "http", "inline"):
            runs = []
            for _ in range(repeats):
                with tempfile.TemporaryDirectory() as d:
                    runs.append(run_once(Path(d), mode, model, configured, server))
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("total", "verifying", "validating", "active")}
            print(f"{mode:6s} {model.stat().st_size / 1e6:.2f} MB  command->active median "
                  f"{med['total'] * 1000:.0f} ms (min {min(r['total'] for r in runs) * 1000:.0f}"
                  f")  download done {med['verifying'] * 1000:.0f} ms, verified "
                  f"{med['validating'] * 1000:.0f} ms, validated+stored+swapped "
                  f"{med['active'] * 1000:.0f} ms  command payload {runs[0]['payload']} B")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
