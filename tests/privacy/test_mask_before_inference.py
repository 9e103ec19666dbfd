"""Privacy masks are applied to the frame before inference: with a mask over the whole frame
the real default model sees only black, on the real sample video with faces in it.

The model is real (the default face detector, models/); its ``infer`` is wrapped only to keep
a copy of each input it receives. The same run without the mask is the control: there the
model sees the picture and finds faces, so the masked run cannot pass by accident.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.config import PipelineConfig
from edge_agent.default_models import DEFAULT_MODEL, ensure_default_models, sample_video_path
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.sources.factory import create_source
from edge_agent.types import Frame
from tests.fakes import RecordingTransport

FRAMES = 100  # the whole sample video (10 s at 10 fps): faces in 8 of its 10 seconds
WHOLE_FRAME = [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]


def _run(masks: list[Any]) -> tuple[list[np.ndarray], list[dict[str, Any]], np.ndarray]:
    model = ensure_default_models()[DEFAULT_MODEL]
    cfg = PipelineConfig.model_validate({
        "name": "door",
        "source": {"type": "video", "uri": str(sample_video_path()), "fps": 0},
        "model": {"path": str(model), "threads": 1},
        "score_threshold": 0.5,
        "privacy": {"masks": masks}})
    bundle = load_bundle(cfg.model, cfg.score_threshold)
    # what a black frame of the video's size becomes after the model's own preprocessing
    black = Frame(image=np.zeros((480, 640, 3), np.uint8), ts=0.0, index=0)
    black_input = bundle.prepare(black)[0][0].copy()
    seen: list[np.ndarray] = []
    infer = bundle.runtime.infer

    def recording_infer(inputs: list[np.ndarray]) -> list[np.ndarray]:
        seen.append(inputs[0].copy())
        return infer(inputs)

    bundle.runtime.infer = recording_infer  # type: ignore[method-assign]
    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    pipe = Pipeline(cfg, bundle, source_factory=create_source,
                    policy=PrivacyPolicy(cfg.privacy, "door", "dev", seal), send=guard.send)
    pipe.start()
    pipe.join(120)
    pipe.stop()
    results = [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]
    return seen, results, black_input


def test_a_mask_over_the_whole_frame_means_the_model_sees_black() -> None:
    seen, results, black = _run(WHOLE_FRAME)
    assert len(seen) == FRAMES and len(results) == FRAMES
    for k, arr in enumerate(seen):
        assert np.array_equal(arr, black), f"inference input {k} is not the black frame"
    assert not any(r["detections"] for r in results)

    # control: the same video without the mask shows the model faces
    seen, results, black = _run([])
    assert len(seen) == FRAMES
    assert not any(np.array_equal(arr, black) for arr in seen)
    assert sum(bool(r["detections"]) for r in results) >= FRAMES // 2, "no faces: a bad control"
