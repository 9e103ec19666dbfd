"""The policy rules: labels, scores, masks, precision, aggregation, identifying fields, caps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.privacy.egress import dumps
from edge_agent.privacy.policy import MAX_VALUES, iso_ts
from edge_agent.privacy.schemas import validate
from edge_agent.types import ClassScore, TrackEvent
from tests.privacy.conftest import det, result
from tests.privacy.payload_checks import assert_no_image_data

LEFT_HALF = ((0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0))


def _payload(msg, seq=1):
    data = json.loads(dumps({"id": "x" * 32, "seq": seq, **msg.payload}))
    validate(msg.kind, data)
    assert_no_image_data(dumps(data))
    return data


def test_result_payload_shape(make_policy):
    p = _payload(make_policy().result(result(det(score=0.87654, box=(0.123456, 0.3, 0.45, 0.98)))))
    assert p["schema"] == "edge-agent/result@1"
    assert p["device"] == "dev-1" and p["pipeline"] == "door"
    assert p["ts"] == "2026-09-21T14:13:20.123Z"
    assert p["model"] == {"name": "detector", "version": 3, "sha256": "a" * 64}
    assert p["frame"] == {"index": 7, "width": 1280, "height": 720}
    assert p["inference_ms"] == 11.8
    assert p["detections"] == [{"label": "person", "class_id": 0, "score": 0.8765,
                                "box": [0.123, 0.3, 0.45, 0.98]}]
    assert p["counts"] == {"person": 1}


def test_iso_ts_rounds_to_milliseconds():
    assert iso_ts(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_ts(1.9996) == "1970-01-01T00:00:02.000Z"


def test_detections_inside_a_mask_never_appear(make_policy):
    policy = make_policy(masks=[LEFT_HALF])
    inside = det(box=(0.1, 0.1, 0.3, 0.3))
    straddling = det(box=(0.3, 0.1, 0.6, 0.3))  # centre 0.45: inside
    outside = det(box=(0.55, 0.1, 0.9, 0.3))
    p = _payload(policy.result(result(inside, straddling, outside)))
    assert [d["box"] for d in p["detections"]] == [[0.55, 0.1, 0.9, 0.3]]
    assert policy.counters()["suppressed_by_mask"] == 2


def test_mask_frame_blacks_out_polygons(make_policy):
    policy = make_policy(masks=[LEFT_HALF])
    img = np.full((90, 160, 3), 200, np.uint8)
    out = policy.mask_frame(img)
    assert out is img
    assert not img[:, :80].any() and (img[:, 81:] == 200).all()
    assert policy.counters()["frames_masked"] == 1


def test_denied_labels_never_appear_anywhere(make_policy):
    policy = make_policy(labels={"deny": ["Person"]})
    classes = (ClassScore(1, "person", 0.9), ClassScore(2, "cat", 0.5))
    p = _payload(policy.result(result(det("person"), det("car", class_id=3), classes=classes)))
    assert "person" not in json.dumps(p)
    assert p["counts"] == {"car": 1}
    assert [c["label"] for c in p["classes"]] == ["cat"]
    ev = TrackEvent("door", 1.0, "enter", 1, "person", 0, 0.0, (0.1, 0.1, 0.2, 0.2))
    assert policy.event(ev) is None


def test_allow_list_and_min_score(make_policy):
    policy = make_policy(labels={"allow": ["car", "person"]}, min_score=0.6)
    p = _payload(policy.result(result(det("person", 0.59), det("car", 0.6), det("dog", 0.99),
                                      det("car", float("nan")))))
    assert [(d["label"], d["score"]) for d in p["detections"]] == [("car", 0.6)]
    c = policy.counters()
    assert (c["suppressed_by_label"], c["suppressed_by_score"]) == (1, 2)


def test_counts_mode_carries_no_boxes_or_scores(make_policy):
    policy = make_policy(aggregate="counts")
    p = _payload(policy.result(result(det("person"), det("person"), det("car"),
                                      values=(1.0, 2.0))))
    assert p["counts"] == {"person": 2, "car": 1} and p["aggregate"] == "counts"
    assert set(p) == {"schema", "id", "seq", "device", "pipeline", "ts", "model", "frame",
                      "inference_ms", "counts", "aggregate"}
    ev = TrackEvent("door", 1.0, "leave", 1, "car", 3, 4.5, (0.6, 0.1, 0.9, 0.2))
    assert "box" not in _payload(policy.event(ev))


def test_precision_and_dropped_scores(make_policy):
    policy = make_policy(box_precision=1, drop_scores=True)
    p = _payload(policy.result(result(det(box=(0.123, 0.456, 0.789, 0.987)),
                                      classes=(ClassScore(1, "cat", 0.7),))))
    assert p["detections"] == [{"label": "person", "class_id": 0, "box": [0.1, 0.5, 0.8, 1.0]}]
    assert p["classes"] == [{"label": "cat", "class_id": 1}]


@pytest.mark.parametrize("mode", ["drop", "hash", "keep"])
def test_identifying_fields(make_policy, mode):
    policy = make_policy(identifying_fields=mode)
    p = _payload(policy.result(result(det("plate", attributes={"text": "AB-123-CD"}))))
    d = p["detections"][0]
    if mode == "drop":
        assert "attributes" not in d and "AB-123-CD" not in json.dumps(p)
    elif mode == "hash":
        h = d["attributes"]["text"]
        assert h.startswith("hmac-sha256:") and "AB-123" not in json.dumps(p)
        again = _payload(policy.result(result(det("plate", attributes={"text": "AB-123-CD"}))))
        assert again["detections"][0]["attributes"]["text"] == h  # stable per device salt
    else:
        assert d["attributes"] == {"text": "AB-123-CD"}


def test_values_are_capped_and_nonfinite_dropped(make_policy):
    policy = make_policy()
    p = _payload(policy.result(result(values=tuple(float(i) for i in range(5000)))))
    assert len(p["values"]) == MAX_VALUES and "detections" not in p
    assert policy.counters()["values_truncated"] == 1
    p = _payload(policy.result(result(values=(1.0, float("inf")))))
    assert "values" not in p


def test_events_in_masks_are_suppressed(make_policy):
    policy = make_policy(masks=[LEFT_HALF])
    inside = TrackEvent("door", 1.0, "enter", 1, "person", 0, 0.0, (0.1, 0.1, 0.2, 0.2))
    outside = TrackEvent("door", 1.0, "enter", 2, "person", 0, 0.0, (0.6, 0.1, 0.8, 0.2))
    assert policy.event(inside) is None
    p = _payload(policy.event(outside))
    assert p["event"] == "enter" and p["box"] == [0.6, 0.1, 0.8, 0.2]
    assert policy.counters()["events_suppressed"] == 1


def test_payloads_are_read_only(make_policy):
    msg = make_policy().result(result(det()))
    with pytest.raises(TypeError):
        msg.payload["detections"] = []  # type: ignore[index]
    with pytest.raises((TypeError, AttributeError)):
        msg.payload["detections"].append({})  # type: ignore[union-attr]
