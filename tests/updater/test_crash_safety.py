"""kill -9 at random moments during updates: every restart resolves a valid model."""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.runtime.interpreter import load_runtime
from edge_agent.signing import generate_key_pair
from edge_agent.updater.store import ModelStore, sha256_file
from tests.conftest import REPO, shared_model

KILLS = 20


@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_a_valid_model(tmp_path: Path) -> None:
    priv, _, _ = generate_key_pair(tmp_path / "keys")
    configured = shared_model("coco_ssd_mobilenet_v1_1.0_quant.tflite")
    models = [shared_model(n) for n in ("tf2_ssd_mobilenet_v2_320_coco_float.tflite",
                                        "mobilenet_v1_0.25_128_quant.tflite",
                                        "keras_lstm_mnist_ptq.tflite")]
    known = {sha256_file(p) for p in [configured, *models]}
    store_dir = tmp_path / "models" / "door"
    rng = random.Random(1234)
    sources: collections.Counter[str] = collections.Counter()
    for i in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.updater.crash_worker", str(store_dir), str(priv),
             str(configured), *map(str, models)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.02, 0.8))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        store = ModelStore(store_dir)
        active = store.resolve_active(configured)
        sources[active.source if not active.reason else f"{active.source} (fell back)"] += 1
        assert active.path.is_file(), f"kill {i}: {active}"
        assert sha256_file(active.path) == active.sha256 and active.sha256 in known
        if active.manifest is not None:
            assert active.manifest.sha256 == active.sha256
            assert active.labels_path is not None
            assert active.labels_path.read_text() == active.manifest.labels
        rt = load_runtime(active.path, threads=1)
        rt.close()
        assert not list(store_dir.glob(".*.tmp"))
    print(f"resolved after {KILLS} kills: {dict(sources)}")
