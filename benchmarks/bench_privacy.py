"""Cost of the privacy layer: snapshot redaction at 1280x720, policy and guard per result.

Run: ``.venv/bin/python benchmarks/bench_privacy.py`` (prints JSON). Needs ../shared/models.
Numbers are medians in milliseconds (``_ms``) or microseconds (``_us``).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge_agent.config import PrivacyConfig  # noqa: E402
from edge_agent.privacy import new_seal  # noqa: E402
from edge_agent.privacy.egress import EgressGuard  # noqa: E402
from edge_agent.privacy.policy import PrivacyPolicy  # noqa: E402
from edge_agent.privacy.redact import TiledFaceFinder, redact  # noqa: E402
from edge_agent.runtime.interpreter import load_runtime  # noqa: E402
from edge_agent.types import Detection, Inference, ModelRef, Result  # noqa: E402

MODELS = REPO.parent / "shared" / "models"


class _NullTransport:
    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> None:
        pass

    def publish_durable(self, pipeline: str, topic: str,
                        render: Callable[[int, str], bytes]) -> int:
        render(1, "0" * 32)
        return 1

    def set_will(self, topic: str, payload: bytes) -> None:
        pass


def _median(fn: Callable[[], Any], n: int, warm: int = 2) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _detections(n: int) -> tuple[Detection, ...]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x, y = rng.uniform(0, 0.8, 2)
        out.append(Detection(i % 5, ["person", "car", "cat", "dog", "bus"][i % 5],
                             float(rng.uniform(0.3, 1.0)), (x, y, x + 0.1, y + 0.2)))
    return tuple(out)


def run() -> dict[str, Any]:
    """Measure and return the numbers (see module docstring)."""
    sys.path.insert(0, str(REPO))
    from tests.privacy.faces import make_detector

    out: dict[str, Any] = {}
    frame = cv2.imread(str(MODELS / "images" / "zidane.jpg"))  # 1280x720, 2 people + crowd
    assert frame is not None and frame.shape[:2] == (720, 1280)
    detect = make_detector(MODELS / "face_detection_full_range_sparse.tflite")
    finder = TiledFaceFinder(detect)
    out["frame"] = "zidane.jpg 1280x720"
    out["detector_runs_per_pass"] = 1 + len(finder.tiles(1280, 720))
    out["face_detect_whole_frame_ms"] = _median(lambda: detect(frame), 10) * 1e3
    faces = finder(frame)
    out["faces_found"] = len(faces)
    out["face_find_tiled_ms"] = _median(lambda: finder(frame), 5) * 1e3
    for mode in ("fill", "blur"):
        out[f"redact_{mode}_ms"] = _median(lambda m=mode: redact(frame.copy(), faces, m), 20) * 1e3
    out["jpeg_encode_q80_ms"] = _median(
        lambda: cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80]), 20) * 1e3

    seal = new_seal()
    model = ModelRef("ssd", 0, "e" * 64)
    for mode in ("fill", "blur"):
        cfg = PrivacyConfig(publish_images=True, redact_mode=mode, snapshots_per_minute=600,
                            masks=(((0.0, 0.8), (0.2, 0.8), (0.2, 1.0), (0.0, 1.0)),))
        ticks = itertools.count()  # one second per call: never rate-limited
        policy = PrivacyPolicy(cfg, "cam", "dev", seal, finder,
                               clock=lambda t=ticks: float(next(t)))
        res = Result("cam", 1, time.time(), 1280, 720, model, 10.0, Inference(), frame)
        out[f"snapshot_total_{mode}_ms"] = _median(lambda p=policy, r=res: p.snapshot(r), 5) * 1e3
        out[f"snapshot_faces_refound_{mode}"] = policy.counters()["faces_refound"]

    guard = EgressGuard(_NullTransport(), "edge-agent", "dev", None, seal)
    image = frame.copy()
    masked = PrivacyPolicy(PrivacyConfig(masks=(((0.0, 0.0), (0.3, 0.0), (0.3, 0.4)),)),
                           "cam", "dev", seal)
    out["mask_frame_1280x720_us"] = _median(lambda: masked.mask_frame(image), 50) * 1e6
    for n in (10, 100):
        res = Result("cam", 1, time.time(), 1280, 720, model, 10.0,
                     Inference(_detections(n)), None)
        for name, cfg in (("default", PrivacyConfig()),
                          ("masks_deny", PrivacyConfig(masks=(((0, 0), (0.3, 0), (0.3, 0.4)),),
                                                       labels={"deny": ["cat"]})),
                          ("counts", PrivacyConfig(aggregate="counts"))):
            policy = PrivacyPolicy(cfg, "cam", "dev", seal)
            msgs: list[Any] = []
            out[f"policy_result_{n}det_{name}_us"] = _median(
                lambda p=policy, r=res, m=msgs: m.append(p.result(r)), 200) * 1e6
            it = iter(msgs)
            out[f"guard_send_{n}det_{name}_us"] = _median(
                lambda i=it: guard.send(next(i)), 150) * 1e6

    ssd = load_runtime(MODELS / "coco_ssd_mobilenet_v1_1.0_quant.tflite", threads=2)
    x = np.zeros(ssd.signature.inputs[0].shape, np.uint8)
    out["ssd_invoke_ms"] = _median(lambda: ssd.infer([x]), 30, warm=5) * 1e3
    ssd.close()
    per_result = out["policy_result_10det_default_us"] + out["guard_send_10det_default_us"]
    out["policy_plus_guard_vs_ssd_invoke"] = per_result / 1e3 / out["ssd_invoke_ms"]
    # a shared VM: compare with MANIFEST.md's idle SSD invoke (9.4 ms) to judge the load
    out["load_avg_1m"] = os.getloadavg()[0]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
