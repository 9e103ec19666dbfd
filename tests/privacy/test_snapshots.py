"""Snapshots: masks burned in, every face redacted (checked with BlazeFace full range), rate
limits, and fail-closed behaviour when the face detector is missing or fails."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from edge_agent.privacy.masks import MaskSet
from edge_agent.privacy.redact import TiledFaceFinder
from tests.conftest import shared_model
from tests.privacy.conftest import det, result
from tests.privacy.faces import make_detector
from tests.privacy.payload_checks import validate_payload

MASKS = [((0.0, 0.6), (0.3, 0.6), (0.3, 1.0), (0.0, 1.0)),  # bottom-left rectangle
         ((0.6, 0.7), (1.0, 0.7), (0.8, 1.0))]  # a triangle


@pytest.fixture(scope="module")
def detect() -> Iterator[object]:
    d = make_detector(shared_model("face_detection_full_range_sparse.tflite"))
    yield d
    d.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def face_image() -> np.ndarray:
    image = cv2.imread(str(shared_model("images/face.jpg")))
    assert image is not None
    return image


@pytest.mark.parametrize("mode", ["fill", "blur"])
def test_snapshot_of_face_jpg_has_no_findable_face_and_black_masks(
        detect, face_image, make_policy, guard, transport, mode):
    assert len(detect(face_image)) == 4  # the original: 4 faces, 2 of them small
    policy = make_policy(face_detector=TiledFaceFinder(detect), publish_images=True,
                         redact_mode=mode, masks=MASKS)
    res = result(det(), image=face_image.copy())
    assert guard.send(policy.result(res))
    snap = policy.snapshot(res)
    assert snap is not None and guard.send(snap)
    topics = transport.topics()
    assert topics[1:] == ["edge-agent/dev-1/snapshots/door", "edge-agent/dev-1/snapshots/door/meta"]
    jpeg, meta = transport.messages[1].payload, transport.messages[2]
    validate_payload(transport.messages[1].topic, jpeg)
    validate_payload(meta.topic, meta.payload)
    published = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert published.shape == face_image.shape
    # no face found, neither on the whole image nor on tiles
    assert detect(published) == []
    assert TiledFaceFinder(detect)(published) == []
    # every masked polygon is uniformly black: each pixel exactly 0 after JPEG decoding
    h, w = published.shape[:2]
    for polygon in MASKS:
        inside = MaskSet([polygon]).pixel_mask(w, h)
        inside = inside > 0  # every pixel of the polygon, edges included
        assert inside.sum() > 1000
        assert published[inside].max() == 0, published[inside].max()
    c = policy.counters()
    assert c["faces_redacted"] >= 4 and c["snapshots_published"] == 1
    assert c["faces_refound"] == 0  # the redaction alone defeated the detector
    import json
    m = json.loads(meta.payload)
    assert m["faces_redacted"] >= 4 and m["result_seq"] == 1 and m["masks"] == 2


def test_no_snapshot_without_publish_images(make_policy, face_image):
    policy = make_policy(face_detector=lambda img: [])
    assert policy.snapshot(result(image=face_image.copy())) is None
    assert policy.counters()["snapshots_refused"] == 0


def _boom(image: np.ndarray) -> list:
    raise RuntimeError("delegate lost")


@pytest.mark.parametrize(("detector", "reason"), [(None, "snapshots_no_detector"),
                                                  (_boom, "snapshots_detector_failed")])
def test_fail_closed_without_a_working_face_detector(make_policy, face_image, detector, reason,
                                                     caplog):
    policy = make_policy(face_detector=detector, publish_images=True)
    assert policy.snapshot(result(image=face_image.copy())) is None
    c = policy.counters()
    assert c["snapshots_refused"] == 1 and c[reason] == 1 and c["snapshots_published"] == 0
    assert "fail closed" in caplog.text or "snapshot dropped" in caplog.text


def test_faces_that_survive_redaction_block_the_snapshot(make_policy, face_image):
    # a detector that always finds a face: after the verify passes, no snapshot
    policy = make_policy(face_detector=lambda img: [(0.1, 0.1, 0.2, 0.2)], publish_images=True)
    assert policy.snapshot(result(image=face_image.copy())) is None
    assert policy.counters()["snapshots_faces_remain"] == 1


def test_redact_faces_off_needs_no_detector(make_policy, face_image):
    policy = make_policy(publish_images=True, redact_faces=False, allow_unredacted_images=True)
    snap = policy.snapshot(result(image=face_image.copy()))
    assert snap is not None
    # "redaction off" is not "no face found"
    assert snap.payload["face_redaction"] == "off" and snap.payload["faces_redacted"] is None


def test_unredacted_snapshots_need_the_explicit_opt_in(make_policy):
    with pytest.raises(ValueError, match="allow_unredacted_images"):
        make_policy(publish_images=True, redact_faces=False)


def test_rate_limit_per_minute(make_policy, face_image):
    now = [1000.0]
    policy = make_policy(face_detector=lambda img: [], publish_images=True,
                         snapshots_per_minute=2, clock=lambda: now[0])
    res = result(image=face_image.copy())
    made = []
    for t in (0, 1, 2, 59.9, 60.0, 60.5, 61.0):
        now[0] = 1000.0 + t
        made.append(policy.snapshot(res) is not None)
    assert made == [True, True, False, False, True, False, True]
    assert policy.counters()["snapshots_rate_limited"] == 3


def test_the_callers_frame_is_not_modified(make_policy, face_image):
    policy = make_policy(face_detector=lambda img: [(0.2, 0.2, 0.6, 0.6)], publish_images=True,
                         masks=MASKS)
    frame = face_image.copy()
    res = result(image=frame)
    policy.snapshot(res)
    assert np.array_equal(frame, face_image)
