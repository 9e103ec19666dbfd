"""AnchorsDecoder: MediaPipe SSD anchors, decoding, NMS and keypoints on synthetic heads."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.decoders.anchors import PRESETS, AnchorOptions, AnchorsDecoder, generate_anchors
from edge_agent.decoders.labels import NO_LABELS, parse_labels
from edge_agent.errors import ModelError
from edge_agent.types import IDENTITY
from tests.decoders.signatures import letterbox_transform, signature, spec


@pytest.mark.parametrize(("preset", "count"), [("face_short", 896), ("face_full", 2304),
                                               ("pose", 2254)])
def test_preset_anchor_counts(preset: str, count: int) -> None:
    anchors = generate_anchors(PRESETS[preset].anchors)
    assert anchors.shape == (count, 4)
    assert anchors[:, :2].min() > 0 and anchors[:, :2].max() < 1
    assert np.all(anchors[:, 2:] == 1.0)  # fixed anchor size


def test_face_short_layout_matches_mediapipe() -> None:
    anchors = generate_anchors(PRESETS["face_short"].anchors)
    # 16x16 cells x 2 anchors first (stride 8), then 8x8 x 6 (three stride-16 layers merged)
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[512], [0.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(anchors[517], anchors[512])
    np.testing.assert_allclose(anchors[518], [1.5 / 8, 0.5 / 8, 1, 1])


def test_variable_anchor_sizes_follow_scales_and_ratios() -> None:
    opts = AnchorOptions(64, 64, 2, (32, 64), aspect_ratios=(1.0, 2.0),
                         interpolated_scale_aspect_ratio=0.0, fixed_anchor_size=False,
                         min_scale=0.2, max_scale=0.8)
    anchors = generate_anchors(opts)
    assert anchors.shape == (2 * 2 * 2 + 1 * 1 * 2, 4)
    np.testing.assert_allclose(anchors[0, 2:], [0.2, 0.2], rtol=1e-6)
    np.testing.assert_allclose(anchors[1, 2:], [0.2 * 2 ** 0.5, 0.2 / 2 ** 0.5], rtol=1e-6)
    np.testing.assert_allclose(anchors[-1, 2:], [0.8 * 2 ** 0.5, 0.8 / 2 ** 0.5], rtol=1e-6)


def face_head(count: int = 896) -> tuple[np.ndarray, np.ndarray]:
    reg = np.zeros((1, count, 16), np.float32)
    logits = np.full((1, count, 1), -10.0, np.float32)
    return reg, logits


def test_decode_box_keypoints_and_weighted_nms() -> None:
    reg, logits = face_head()
    # two neighbouring anchors of the stride-16 map see the same face; 32 px = 0.25 of 128
    for a, shift, logit in ((512 + 6 * 9, 0.0, 3.0), (512 + 6 * 9 + 1, 4.0, 1.0)):
        reg[0, a, :4] = [shift, 0.0, 32.0, 32.0]
        reg[0, a, 4:6] = [-8.0, -8.0]  # first keypoint up-left of the centre
        logits[0, a, 0] = logit
    sig = signature(spec((1, 896, 16), name="regressors"), spec((1, 896, 1)),
                    input_shape=(1, 128, 128, 3))
    dec = AnchorsDecoder(sig, NO_LABELS, {}, 0.5)
    assert dec.preset == "face_short" and dec.num_keypoints == 6 and dec.letterbox
    inf = dec.decode([reg, logits], IDENTITY)
    assert len(inf.detections) == 1
    det = inf.detections[0]
    assert det.label == "face" and det.score == pytest.approx(1 / (1 + np.exp(-3.0)), abs=1e-5)
    ax, ay = 1.5 / 8, 1.5 / 8  # anchor 512 + 6 * 9 is cell (1, 1) of the 8x8 map
    w1, w2 = 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-1.0))
    cx = ax + (w2 * 4.0 / 128) / (w1 + w2)  # score-weighted mean of the two centres
    np.testing.assert_allclose(det.box, (cx - 0.125, ay - 0.125, cx + 0.125, ay + 0.125),
                               atol=1e-5)
    # both anchors share the cell and the keypoint offset, so the weighted keypoint is the same
    np.testing.assert_allclose(det.keypoints[0], (ax - 8 / 128, ay - 8 / 128), atol=1e-5)


def test_plain_nms_keeps_the_best_box_and_letterbox_maps_keypoints() -> None:
    reg, logits = face_head()
    reg[0, 0, :4] = [0, 0, 16, 16]
    logits[0, 0, 0] = 2.0
    logits[0, 1, 0] = 1.0  # identical box at the same cell, suppressed
    reg[0, 1, :4] = [0, 0, 16, 16]
    sig = signature(spec((1, 896, 1)), spec((1, 896, 16)), input_shape=(1, 128, 128, 3))
    dec = AnchorsDecoder(sig, parse_labels(["head"]), {"nms": "plain"}, 0.5)
    tr = letterbox_transform(200, 100, 128)  # wide frame: padded top and bottom
    inf = dec.decode([logits, reg], tr)  # scores first: matched by shape
    assert [d.label for d in inf.detections] == ["head"]
    kx, ky = inf.detections[0].keypoints[0]
    assert kx == pytest.approx(0.5 / 16 / tr.scale_x, abs=1e-5)
    assert ky == 0.0  # above the image band: clipped to the frame


def test_pose_preset_and_explicit_anchor_options() -> None:
    sig = signature(spec((1, 2254, 12)), spec((1, 2254, 1)), input_shape=(1, 224, 224, 3))
    dec = AnchorsDecoder(sig, NO_LABELS, {}, 0.5)
    assert dec.preset == "pose" and dec.label == "person" and dec.num_keypoints == 4
    # 64 px input, strides 16 and 32, one anchor per cell: 4x4 + 2x2 = 20
    sig = signature(spec((1, 20, 4)), spec((1, 20, 1)), input_shape=(1, 64, 64, 3))
    dec = AnchorsDecoder(sig, NO_LABELS, {"strides": [16, 32], "label": "blob",
                                          "interpolated_scale_aspect_ratio": 0.0,
                                          "aspect_ratios": [1.0]}, 0.5)
    assert len(dec.anchors) == 20 and dec.label == "blob" and dec.num_keypoints == 0


def test_refuses_unknown_anchor_count_and_other_models() -> None:
    sig = signature(spec((1, 100, 16)), spec((1, 100, 1)))
    with pytest.raises(ModelError, match="set decoder_options preset / strides"):
        AnchorsDecoder(sig, NO_LABELS, {}, 0.5)
    with pytest.raises(ModelError, match="A = 896 anchors"):
        AnchorsDecoder(sig, NO_LABELS, {"preset": "face_short"}, 0.5)
    with pytest.raises(ModelError, match=r"decoder 'anchors' does not fit.*try decoder: yolo"):
        AnchorsDecoder(signature(spec((1, 25200, 85))), NO_LABELS, {}, 0.5)
    with pytest.raises(ValueError, match="strides: expected a list of integers >= 1"):
        AnchorsDecoder(sig, NO_LABELS, {"strides": "8,16"}, 0.5)


def test_label_option_wins_over_label_file() -> None:
    sig = signature(spec((1, 896, 16)), spec((1, 896, 1)), input_shape=(1, 128, 128, 3))
    assert AnchorsDecoder(sig, parse_labels(["head"]), {}, 0.5).label == "head"
    assert AnchorsDecoder(sig, parse_labels(["head"]), {"label": "visitor"}, 0.5).label == \
        "visitor"


def test_body_box_from_pose_keypoints_and_refused_without_keypoints() -> None:
    reg = np.zeros((1, 2254, 12), np.float32)
    logits = np.full((1, 2254, 1), -10.0, np.float32)
    logits[0, 0, 0] = 5.0
    reg[0, 0, 4:8] = [22.4, 22.4, 22.4, 0.0]  # centre (+0.1, +0.1), circle point (+0.1, 0)
    sig = signature(spec((1, 2254, 12)), spec((1, 2254, 1)), input_shape=(1, 224, 224, 3))
    inf = AnchorsDecoder(sig, NO_LABELS, {}, 0.5).decode([reg, logits], IDENTITY)
    a = 0.5 / 28
    np.testing.assert_allclose(inf.detections[0].box, (a, a, a + 0.2, a + 0.2), atol=1e-5)
    face = signature(spec((1, 896, 4)), spec((1, 896, 1)), input_shape=(1, 128, 128, 3))
    with pytest.raises(ValueError, match="box: body boxes need 2 keypoints"):
        AnchorsDecoder(face, NO_LABELS, {"box": "body"}, 0.5)
