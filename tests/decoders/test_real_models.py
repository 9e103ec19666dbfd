"""Decoders on real models and real images from ../shared/models (skipped when absent).

Reference boxes were computed once with these decoders, checked by drawing them onto the
images and looking at them, and are hard-coded here; a decode must match each with IoU >= 0.8.
Preprocessing is the runtime's own Preprocessor, with the letterbox each decoder asks for.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.decoders.factory import create_decoder
from edge_agent.decoders.labels import load_labels
from edge_agent.errors import ModelError
from edge_agent.runtime.interpreter import load_runtime
from edge_agent.runtime.preprocess import Preprocessor
from edge_agent.types import Inference
from tests.conftest import active_backend, shared_model
from tests.decoders.signatures import iou

Ref = tuple[str, tuple[float, float, float, float]]


def run(model: str, image: str, *, labels: str | None = None, decoder: str = "auto",
        threshold: float = 0.5, options: dict | None = None, input_range: str = "auto"
        ) -> tuple[Inference, str]:
    """Load, preprocess, infer and decode one image; returns the inference and decoder kind."""
    path = shared_model(model)
    img_path = shared_model(f"images/{image}")
    lab = load_labels(shared_model(labels) if labels else None)
    runtime = load_runtime(path, threads=2)
    try:
        dec = create_decoder(decoder, runtime.signature, lab, options or {}, threshold)
        pre = Preprocessor(runtime.signature.inputs[0], letterbox=dec.letterbox,
                           input_range=input_range)
        frame = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        assert frame is not None, img_path
        x, transform = pre(frame)
        return dec.decode(runtime.infer([x]), transform), dec.kind
    finally:
        runtime.close()


def assert_matches(inference: Inference, refs: list[Ref], min_iou: float = 0.8) -> None:
    """Each reference (label, box) has a detection of that label with IoU >= ``min_iou``."""
    for label, box in refs:
        best = max((iou(d.box, box) for d in inference.detections if d.label == label),
                   default=0.0)
        assert best >= min_iou, (label, box, [(d.label, d.score, d.box)
                                              for d in inference.detections])


def test_coco_ssd_v1_quant_grace_hopper() -> None:
    inf, kind = run("coco_ssd_mobilenet_v1_1.0_quant.tflite", "grace_hopper.bmp",
                    labels="coco_labels.txt")
    assert kind == "ssd"
    person = [d for d in inf.detections if d.label == "person" and d.score >= 0.5]
    assert person
    assert_matches(inf, [("person", (0.0077, 0.0505, 0.9861, 0.9857)),
                         ("tie", (0.4377, 0.7100, 0.5628, 0.8982))])


def test_coco_ssd_v1_with_placeholder_labelmap_gives_same_names() -> None:
    inf, _ = run("coco_ssd_mobilenet_v1_1.0_quant.tflite", "grace_hopper.bmp",
                 labels="coco_ssd_labelmap_with_placeholders.txt")
    assert {d.label for d in inf.detections} >= {"person", "tie"}


def test_tf2_ssd_float_zidane_outputs_found_by_value() -> None:
    inf, kind = run("tf2_ssd_mobilenet_v2_320_coco_float.tflite", "zidane.jpg",
                    labels="coco_labels.txt")
    assert kind == "ssd"
    assert [d.label for d in inf.detections] == ["person", "person"]
    assert_matches(inf, [("person", (0.5789, 0.0477, 0.9054, 0.9898)),
                         ("person", (0.0685, 0.2922, 0.7414, 0.9968))])


def test_yolov5n_int8_zidane() -> None:
    # with our letterbox (grey 114, centred) the left person scores 0.48, so threshold 0.4
    inf, kind = run("yolov5n-int8.tflite", "zidane.jpg", labels="coco_labels.txt",
                    threshold=0.4)
    assert kind == "yolo"
    assert [d.label for d in inf.detections] == ["person", "person"]
    assert inf.detections[0].score > 0.7
    assert_matches(inf, [("person", (0.5873, 0.0176, 0.8922, 1.0)),
                         ("person", (0.1009, 0.2846, 0.6075, 0.994))])


def test_blazeface_short_range_face_jpg() -> None:
    inf, kind = run("face_detection_short_range.tflite", "face.jpg")
    assert kind == "anchors"
    assert len(inf.detections) >= 2
    assert all(d.label == "face" and len(d.keypoints) == 6 for d in inf.detections)
    assert_matches(inf, [("face", (0.4975, 0.1975, 0.6950, 0.4815)),
                         ("face", (0.2541, 0.2848, 0.4479, 0.5636))])


def test_blazeface_full_range_face_jpg_finds_all_four() -> None:
    inf, _ = run("face_detection_full_range_sparse.tflite", "face.jpg")
    assert len(inf.detections) == 4
    assert_matches(inf, [("face", (0.4827, 0.1771, 0.6928, 0.4803)),
                         ("face", (0.2438, 0.2635, 0.4563, 0.5703)),
                         ("face", (0.0041, 0.3195, 0.0881, 0.4408)),
                         ("face", (0.8579, 0.3631, 0.9557, 0.5042))])
    # keypoints (eyes first) lie inside their face box
    for d in inf.detections:
        x, y = d.keypoints[0]
        assert d.box[0] <= x <= d.box[2] and d.box[1] <= y <= d.box[3]


def test_blazeface_short_range_no_face_on_cat() -> None:
    inf, _ = run("face_detection_short_range.tflite", "cat.bmp")
    assert inf.detections == ()


def test_pose_detection_squat() -> None:
    inf, kind = run("pose_detection.tflite", "squat.bmp")
    assert kind == "anchors"
    assert len(inf.detections) == 1
    det = inf.detections[0]
    assert det.label == "person" and det.score > 0.9 and len(det.keypoints) == 4
    # default box: the square around BlazePose's body circle (hip centre + radius point),
    # which holds the whole crouching person from hair to shoes
    assert_matches(inf, [("person", (0.0, 0.2267, 0.8535, 1.0))])
    # keypoint 0 is the hip centre, in the lower half of the image
    assert det.keypoints[0][1] > 0.5
    # the detector's own regressed box is the face/upper-body proxy
    face, _ = run("pose_detection.tflite", "squat.bmp", options={"box": "detector"})
    assert_matches(face, [("person", (0.3852, 0.2754, 0.6286, 0.4753))])


def test_mobilenet_v2_quant_cat() -> None:
    inf, kind = run("mobilenet_v2_1.0_224_quant.tflite", "cat.bmp",
                    labels="imagenet_labels.txt", threshold=0.0,
                    options={"top_k": 3})
    assert kind == "classification"
    assert inf.classes is not None and len(inf.classes) == 3
    assert inf.classes[0].label == "Egyptian cat"
    assert inf.classes[0].score > 0.5
    assert all(c.class_id != 0 for c in inf.classes)  # background never reported


def test_deeplab_int64_map_gives_class_shares() -> None:
    inf, kind = run("deeplabv3_mnv2_dm05_pascal_quant.tflite", "grace_hopper.bmp",
                    labels="pascal_voc_segmentation_labels.txt", decoder="raw")
    assert kind == "raw"
    assert inf.classes is not None and inf.values is not None
    assert inf.classes[0].label == "person"
    assert 0.55 < inf.classes[0].score < 0.75
    assert len(inf.values) == 21 and abs(sum(inf.values) - 1.0) < 1e-6


def test_selfie_segmentation_is_pooled_to_max_values() -> None:
    if active_backend() == "tflite_runtime":
        # MediaPipe's custom op is built into LiteRT only: a clear refusal, not a crash
        with pytest.raises(ModelError, match="unresolved custom op: Convolution2DTransposeBias"):
            run("selfie_segmentation.tflite", "grace_hopper.bmp", decoder="raw")
        return
    inf, _ = run("selfie_segmentation.tflite", "grace_hopper.bmp", decoder="raw",
                 input_range="0..1")
    assert inf.values is not None and len(inf.values) == 1024
    grid = np.asarray(inf.values).reshape(32, 32)
    assert grid[16, 16] > 0.8 and grid[0, 0] < 0.2


def test_no_label_file_uses_the_preset_class_name() -> None:
    inf, _ = run("face_detection_short_range.tflite", "grace_hopper.bmp")
    assert [d.label for d in inf.detections] == ["face"]
