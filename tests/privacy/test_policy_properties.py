"""Property: random detections under random policies never yield a payload that breaks the
policy or its schema (checked against an independent reference of the rules)."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.config import PrivacyConfig
from edge_agent.privacy import new_seal
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.types import ClassScore, Detection, TrackEvent
from tests.fakes import RecordingTransport
from tests.privacy.conftest import result
from tests.privacy.payload_checks import assert_no_image_data, validate_payload

LABELS = ["person", "Person", "car", "cat", "plate", "face"]
grid = st.integers(0, 8).map(lambda i: i / 8)


@st.composite
def rectangles(draw):
    x0, x1 = sorted((draw(grid), draw(grid)))
    y0, y1 = sorted((draw(grid), draw(grid)))
    if x1 == x0 or y1 == y0:
        x1, y1 = min(1.0, x0 + 0.125), min(1.0, y0 + 0.125)
        x0, y0 = x1 - 0.125, y1 - 0.125
    return ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


policies = st.fixed_dictionaries({
    "labels": st.fixed_dictionaries({
        "allow": st.none() | st.lists(st.sampled_from(LABELS), max_size=3),
        "deny": st.lists(st.sampled_from(LABELS), max_size=3)}),
    "min_score": st.none() | st.floats(0, 1),
    "aggregate": st.sampled_from([None, "counts"]),
    "box_precision": st.integers(0, 6),
    "drop_scores": st.booleans(),
    "identifying_fields": st.sampled_from(["drop", "hash", "keep"]),
    "masks": st.lists(rectangles(), max_size=3),
})
unit = st.floats(0, 1)
scores = st.floats(0, 1) | st.sampled_from([math.nan, math.inf, -0.5, 1.5])


@st.composite
def detections(draw):
    x0, x1 = sorted((draw(unit), draw(unit)))
    y0, y1 = sorted((draw(unit), draw(unit)))
    attrs = draw(st.dictionaries(st.sampled_from(["text", "plate", "name"]),
                                 st.text(max_size=300), max_size=2))
    kps = tuple(draw(st.lists(st.tuples(unit, unit), max_size=6)))
    track = draw(st.none() | st.integers(0, 10_000))
    return Detection(draw(st.integers(0, 90)), draw(st.sampled_from(LABELS)), draw(scores),
                     (x0, y0, x1, y1), kps, track, attrs)


def _allowed(cfg: PrivacyConfig, label: str) -> bool:
    key = label.casefold()
    if key in {d.casefold() for d in cfg.labels.deny}:
        return False
    return cfg.labels.allow is None or key in {a.casefold() for a in cfg.labels.allow}


def _in_masks(cfg: PrivacyConfig, box) -> bool:
    cx, cy = np.float32((box[0] + box[2]) / 2), np.float32((box[1] + box[3]) / 2)
    return any(m[0][0] <= cx <= m[1][0] and m[0][1] <= cy <= m[2][1] for m in cfg.masks)


def _expected(cfg: PrivacyConfig, dets) -> list[Detection]:
    out = []
    for d in dets:
        ok_score = math.isfinite(d.score) and 0 <= d.score <= 1 and (
            cfg.min_score is None or d.score >= cfg.min_score)
        if _allowed(cfg, d.label) and ok_score and not _in_masks(cfg, d.box):
            out.append(d)
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, dets=st.lists(detections(), max_size=12),
       classes=st.none() | st.lists(st.builds(ClassScore, st.integers(0, 9),
                                              st.sampled_from(LABELS), scores), max_size=5),
       values=st.none() | st.lists(st.floats(-1e6, 1e6), max_size=1200))
def test_random_detections_never_break_policy_or_schema(policy, dets, classes, values):
    cfg = PrivacyConfig.model_validate(policy)
    seal = new_seal()
    transport = RecordingTransport()
    guard = EgressGuard(transport, "edge-agent", "dev-1", None, seal)
    pol = PrivacyPolicy(cfg, "door", "dev-1", seal, salt=b"k" * 32)
    res = result(*dets, classes=None if classes is None else tuple(classes),
                 values=None if values is None else tuple(values))
    assert guard.send(pol.result(res))
    payload = transport.messages[0].payload
    assert_no_image_data(payload)
    validate_payload(transport.messages[0].topic, payload)
    p = json.loads(payload)

    expected = _expected(cfg, dets)
    want_counts: dict[str, int] = {}
    for d in expected:
        want_counts[d.label] = want_counts.get(d.label, 0) + 1
    got_counts = dict(p["counts"])
    published_classes = p.get("classes", [])
    if cfg.aggregate == "counts":
        assert not {"detections", "classes", "values"} & set(p)
        assert "box" not in payload.decode() and "score" not in payload.decode()
        allowed_classes = [c for c in (classes or []) if _allowed(cfg, c.label)
                           and math.isfinite(c.score) and 0 <= c.score <= 1
                           and (cfg.min_score is None or c.score >= cfg.min_score)]
        if allowed_classes:
            best = max(allowed_classes, key=lambda c: c.score).label
            got_counts[best] -= 1
            if got_counts[best] == 0:
                del got_counts[best]
        assert got_counts == want_counts
    else:
        assert got_counts == want_counts
        out = p.get("detections", [])
        assert len(out) == len(expected)
        for d_out, d_in in zip(out, expected, strict=True):
            assert d_out["label"] == d_in.label and _allowed(cfg, d_out["label"])
            assert ("score" in d_out) != cfg.drop_scores
            if "score" in d_out and cfg.min_score is not None:
                assert d_out["score"] >= round(cfg.min_score, 4) - 1e-4
            for v in d_out["box"]:
                assert round(v, cfg.box_precision) == v
            attrs = d_out.get("attributes", {})
            if cfg.identifying_fields == "drop":
                assert not attrs
            elif cfg.identifying_fields == "hash":
                assert len(attrs) == len(d_in.attributes)
                assert all(v.startswith("hmac-sha256:") and len(v) == 44 for v in attrs.values())
        for c in published_classes:
            assert _allowed(cfg, c["label"])
        if "values" in p:
            assert len(p["values"]) <= 1000
    assert all(_allowed(cfg, label) for label in p["counts"])


@settings(max_examples=60, deadline=None)
@given(policy=policies, label=st.sampled_from(LABELS), box=st.tuples(unit, unit, unit, unit),
       kind=st.sampled_from(["enter", "leave"]))
def test_random_events_never_break_policy_or_schema(policy, label, box, kind):
    cfg = PrivacyConfig.model_validate(policy)
    seal = new_seal()
    transport = RecordingTransport()
    guard = EgressGuard(transport, "edge-agent", "dev-1", None, seal)
    pol = PrivacyPolicy(cfg, "door", "dev-1", seal)
    box = (min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3]))
    msg = pol.event(TrackEvent("door", 1e9, kind, 3, label, 0, 1.5, box))
    hidden = not _allowed(cfg, label) or _in_masks(cfg, box)
    assert (msg is None) == hidden
    if msg is not None:
        assert guard.send(msg)
        payload = transport.messages[0].payload
        validate_payload(transport.messages[0].topic, payload)
        assert ("box" in json.loads(payload)) == (cfg.aggregate != "counts")
