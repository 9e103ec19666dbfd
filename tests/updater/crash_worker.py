"""Runs updates, watches and rollbacks in a loop until it is killed (for the kill -9 test).

Usage: python -m tests.updater.crash_worker STORE_DIR KEY_FILE CONFIGURED MODEL...
"""

from __future__ import annotations

import base64
import hashlib
import random
import sys
import time
from pathlib import Path

from edge_agent.config import UpdatesConfig
from edge_agent.signing import load_private_key
from edge_agent.updater.manifest import build_manifest
from edge_agent.updater.store import ModelStore
from edge_agent.updater.updater import ModelUpdater, UpdateHooks


def main(argv: list[str]) -> None:
    store_dir, key_file, configured = Path(argv[0]), Path(argv[1]), Path(argv[2])
    models = [Path(a) for a in argv[3:]]
    key = load_private_key(key_file)
    store = ModelStore(store_dir)
    active = store.resolve_active(configured)
    current = [(active.name, active.version, active.sha256)]

    def swap(path: Path, labels: Path | None, manifest: object) -> None:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        version = getattr(manifest, "version", 0)
        current[0] = (getattr(manifest, "name", "configured"), version, sha)

    hooks = UpdateHooks(active=lambda: current[0], validate=lambda p, lp, **kw: None, swap=swap,
                        publish_state=lambda s: None, reply=lambda r, ok, e: None)
    config = UpdatesConfig(watch_inferences=4, watch_seconds=5.0, max_failure_ratio=0.25,
                           public_keys=())
    pub = key.public_key()
    from edge_agent.signing import key_id
    updater = ModelUpdater("door", config, store, {key_id(pub): pub}, hooks)
    updater.start(active)
    print("ready", flush=True)
    rng = random.Random()
    n = 0
    while True:
        n += 1
        model = rng.choice(models)
        data = model.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha == current[0][2]:
            continue
        manifest = build_manifest(name=model.stem, version=time.time_ns() // 1000,
                                  sha256=sha, size=len(data), key=key, url=model.as_uri(),
                                  labels=f"label-{n}\n")
        command: dict[str, object] = {"request_id": str(n), "manifest": dict(manifest.raw)}
        if rng.random() < 0.3:
            command["data"] = base64.b64encode(data).decode()
        updater.handle_update(command)
        while updater.busy:
            if current[0][2] == sha:
                updater.record_inference(rng.random() < 0.8, True, sha256=sha)
            time.sleep(0.002)
        if rng.random() < 0.2:
            updater.rollback(f"rb{n}")
            while updater.busy:
                time.sleep(0.002)


if __name__ == "__main__":
    main(sys.argv[1:])
