"""Decoding at the model's scale: a JPEG frame is decoded by DCT scaling (1/2, 1/4, 1/8) only
as small as keeps both sides at least the model's input, and the detections match those on
full decodes.

Tolerance (measured on these images when the feature was written: IoU >= 0.95, scores within
0.06): every detection scoring at least 0.1 above the threshold on one decode has a match on
the other with IoU >= 0.9 and a score within 0.1; detections closer to the threshold than that
may come and go (a borderline face at 0.50 appeared on a 1/2 decode of a 640x480 frame).
Real models and images from ../shared/models and models/ (skipped when absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.bundle import load_bundle
from edge_agent.config import ImagesSourceConfig, ModelConfig, PipelineConfig
from edge_agent.pipeline import Pipeline, Tuning
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.sources.encoded import EncodedImage, scale_factor
from edge_agent.sources.images import ImageFolderSource
from edge_agent.types import Detection, Frame, Result
from tests.conftest import shared_model
from tests.decoders.signatures import iou
from tests.fakes import RecordingTransport

THRESHOLD = 0.5
MARGIN = 0.1
MIN_IOU = 0.9
MAX_SCORE_DIFF = 0.1


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


def _test_jpegs() -> dict[str, bytes]:
    """JPEGs large enough to be decoded at 1/2 or less for a 192x192 or 300x300 input."""
    face = cv2.imread(str(shared_model("images/face.jpg")))
    grace = cv2.imread(str(shared_model("images/grace_hopper.bmp")))
    assert face is not None and grace is not None
    return {
        "zidane.jpg": shared_model("images/zidane.jpg").read_bytes(),  # 1280x720 as stored
        "grace_hopper_1024x1200.jpg": _jpeg(cv2.resize(grace, (1024, 1200),
                                                       interpolation=cv2.INTER_CUBIC)),
        "face_1024x710.jpg": _jpeg(cv2.resize(face, (1024, 710), interpolation=cv2.INTER_CUBIC)),
        "face_640x480.jpg": _jpeg(cv2.resize(face, (640, 480), interpolation=cv2.INTER_AREA)),
    }


def _assert_match(a: tuple[Detection, ...], b: tuple[Detection, ...], where: str) -> None:
    for one, other, side in ((a, b, "full"), (b, a, "scaled")):
        for d in one:
            if d.score < THRESHOLD + MARGIN:
                continue
            best = max(other, key=lambda o: iou(o.box, d.box), default=None)
            assert best is not None, f"{where}: {side} {d.label} {d.score:.2f} has no match"
            assert iou(best.box, d.box) >= MIN_IOU, (where, side, d, best)
            assert abs(best.score - d.score) <= MAX_SCORE_DIFF, (where, side, d, best)


def test_scale_factor_keeps_both_sides_at_least_the_input() -> None:
    assert scale_factor(640, 480, 192, 192) == 2  # 320x240
    assert scale_factor(1280, 720, 192, 192) == 2  # 640x360; 1/4 would be 180 high
    assert scale_factor(1280, 720, 128, 128) == 4
    assert scale_factor(1920, 1080, 128, 128) == 8
    assert scale_factor(640, 480, 300, 300) == 1  # 240 < 300: decoded in full
    assert scale_factor(512, 355, 192, 192) == 1


@pytest.mark.parametrize(("model", "labels"), [
    ("face_detection_full_range_sparse.tflite", None),
    ("face_detection_short_range.tflite", None),
    ("coco_ssd_mobilenet_v1_1.0_quant.tflite", "coco_labels.txt"),
])
def test_detections_at_the_model_scale_match_full_decodes(model: str, labels: str | None
                                                          ) -> None:
    bundle = load_bundle(ModelConfig(path=shared_model(model),
                                     labels=shared_model(labels) if labels else None,
                                     threads=2), THRESHOLD)
    try:
        pre = bundle.preprocessor
        assert pre is not None
        scaled_any = False
        for name, data in _test_jpegs().items():
            encoded = EncodedImage.jpeg(data)
            assert encoded is not None
            full = encoded.decode()
            scaled = encoded.at_least(pre.width, pre.height)
            assert full is not None and scaled is not None
            h, w = scaled.shape[:2]
            assert w >= pre.width and h >= pre.height  # never smaller than the input
            factor = scale_factor(encoded.width, encoded.height, pre.width, pre.height)
            assert (w, h) == (-(-encoded.width // factor), -(-encoded.height // factor))
            scaled_any |= factor > 1
            results = []
            for image in (full, scaled):
                inputs, transform = bundle.prepare(Frame(index=0, ts=0.0, image=image))
                results.append(bundle.decode(bundle.runtime.infer(inputs), transform))
            _assert_match(results[0].detections, results[1].detections, f"{model} {name}")
        assert scaled_any
    finally:
        bundle.close()


class _Viewer:
    """A live-view tap that is watching (the pipeline's FrameTap protocol)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def wanted(self) -> bool:
        return True

    def offer(self, frame: Frame, result: Result) -> None:
        assert frame.image is not None
        self.shapes.append(frame.image.shape)


def _folder(cfg: object) -> ImageFolderSource:
    assert isinstance(cfg, ImagesSourceConfig)
    return ImageFolderSource(cfg)


def _run(folder: Path, *, tuning: Tuning | None = None, view: _Viewer | None = None
         ) -> tuple[list[dict], Pipeline]:
    mask = [[0.0, 0.28], [0.12, 0.28], [0.12, 0.48], [0.0, 0.48]]  # the face at the left edge
    cfg = PipelineConfig.model_validate({
        "name": "lobby", "source": {"type": "images", "uri": str(folder), "fps": 0},
        "model": {"path": str(shared_model("face_detection_full_range_sparse.tflite")),
                  "threads": 2},
        "privacy": {"masks": [mask]}})
    bundle = load_bundle(cfg.model, cfg.score_threshold)
    transport = RecordingTransport()
    seal = new_seal()
    guard = EgressGuard(transport, "edge-agent", "dev", None, seal)
    pipe = Pipeline(cfg, bundle, source_factory=_folder,
                    policy=PrivacyPolicy(cfg.privacy, "lobby", "dev", seal), send=guard.send,
                    tuning=tuning, view=view)
    pipe.start()
    pipe.join(120)
    pipe.stop()
    bundle.close()
    results = [json.loads(m.payload) for m in transport.messages if "/results/" in m.topic]
    return sorted(results, key=lambda r: r["frame"]["index"]), pipe


def _boxes(result: dict) -> list[tuple[float, float, float, float]]:
    return [tuple(d["box"]) for d in result["detections"]]


def test_pipeline_infers_on_model_scale_decodes_masked_and_reports_the_full_size(
        tmp_path: Path) -> None:
    jpegs = _test_jpegs()
    (tmp_path / "a.jpg").write_bytes(jpegs["face_1024x710.jpg"])
    scaled, pipe = _run(tmp_path)
    full, _ = _run(tmp_path, tuning=Tuning(model_scale_decode=False))
    assert len(scaled) == len(full) == 1
    # the result names the frame as the camera delivered it, not the decode's size
    assert (scaled[0]["frame"]["width"], scaled[0]["frame"]["height"]) == (1024, 710)
    last = pipe.last_frame()
    assert last is not None and last.image is not None
    assert last.image.shape == (355, 512, 3)  # what the model was given: 1/2 by DCT scaling
    assert not last.image[100:170, :61].any()  # the privacy mask burned into that decode
    assert len(_boxes(scaled[0])) == len(_boxes(full[0])) == 3  # the fourth face is masked
    for a in _boxes(full[0]):
        assert max(iou(a, b) for b in _boxes(scaled[0])) >= MIN_IOU


def test_a_live_viewer_gets_full_frames(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(_test_jpegs()["face_1024x710.jpg"])
    viewer = _Viewer()
    results, _ = _run(tmp_path, view=viewer)
    assert len(results) == 1
    assert viewer.shapes == [(710, 1024, 3)]
