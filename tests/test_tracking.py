"""IouTracker: stable ids on a generated crossing clip, enter/leave events and dwell time."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.config import TrackingConfig, VideoSourceConfig
from edge_agent.sources.camera import OpencvVideoSource
from edge_agent.sources.synthetic import write_crossing_clip
from edge_agent.tracking import IouTracker, greedy_match, iou_matrix
from edge_agent.types import Detection

FPS = 10.0


def _person(box: tuple[float, float, float, float], label: str = "person") -> Detection:
    return Detection(class_id=0 if label == "person" else 2, label=label, score=0.9, box=box)


def _colour_detector(image: np.ndarray,
                     colours: list[tuple[int, int, int]]) -> list[tuple[int, Detection]]:
    """Find each coloured figure (its clothing) as a 'person': (colour index, detection)."""
    h, w = image.shape[:2]
    out = []
    for k, colour in enumerate(colours):
        c = np.array(colour, np.int16)
        mask = cv2.inRange(image, np.clip(c - 50, 0, 255).astype(np.uint8),
                           np.clip(c + 50, 0, 255).astype(np.uint8))
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        pts = cv2.findNonZero(mask)
        if pts is None:
            continue
        x, y, bw, bh = cv2.boundingRect(pts)
        out.append((k, _person((x / w, y / h, (x + bw) / w, (y + bh) / h))))
    return out


def test_ids_stay_stable_on_a_crossing_clip(tmp_path: Path) -> None:
    truth = write_crossing_clip(tmp_path / "cross.avi", seconds=8.0, fps=FPS)
    colours = [t.color for t in truth]
    source = OpencvVideoSource(VideoSourceConfig(type="video", uri=str(tmp_path / "cross.avi"),
                                                 fps=0))
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=2, max_missed=3), "door")
    ids: dict[int, list[int | None]] = {0: [], 1: []}
    events = []
    overlapping = 0
    source.open()
    try:
        while True:
            try:
                frame = source.read(5.0)
            except EOFError:
                break
            assert frame is not None and frame.image is not None
            found = _colour_detector(frame.image, colours)
            assert len(found) == 2  # the detector sees both, also while they overlap
            boxes = np.array([d.box for _, d in found])
            overlapping += bool(iou_matrix(boxes[:1], boxes[1:])[0, 0] > 0)
            # shuffle the order the detector reports them in, as real decoders do
            if frame.index % 2:
                found.reverse()
            tracked, new_events = tracker.update(tuple(d for _, d in found), frame.ts)
            events += new_events
            for (k, _), det in zip(found, tracked, strict=True):
                ids[k].append(det.track_id)
    finally:
        source.close()
    assert overlapping >= 5  # the figures really crossed (boxes overlap in several frames)
    assert ids[0][0] is None and ids[1][0] is None  # tentative in their first frame
    red, blue = set(ids[0][1:]), set(ids[1][1:])
    assert len(red) == 1 and len(blue) == 1 and red != blue, (ids[0], ids[1])
    assert [e.event for e in events] == ["enter", "enter"]
    assert {e.track_id for e in events} == red | blue


def test_ids_survive_a_full_overlap_thanks_to_velocity(tmp_path: Path) -> None:
    """Same band, boxes nearly coincide mid-way: the predicted boxes keep the ids apart."""
    truth = write_crossing_clip(tmp_path / "x.avi", width=320, height=240, seconds=4.0,
                                fps=FPS, y_offset=0.02)
    rng = np.random.default_rng(0)
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=1), "p")
    ids: dict[int, set[int | None]] = {1: set(), 2: set()}
    for n in range(40):
        dets = []
        for t in truth:
            jitter = rng.normal(0, 0.003, 4)
            dets.append((t.object_id, _person(tuple(float(v) for v in  # type: ignore[arg-type]
                                                    np.array(t.boxes[n]) + jitter))))
        rng.shuffle(dets)
        out, _ = tracker.update(tuple(d for _, d in dets), n / FPS)
        for (oid, _), det in zip(dets, out, strict=True):
            ids[oid].add(det.track_id)
    assert len(ids[1]) == 1 and len(ids[2]) == 1 and ids[1] != ids[2], ids


def test_enter_leave_and_dwell() -> None:
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=2, max_missed=3), "door")
    box = (0.1, 0.1, 0.3, 0.5)
    timeline = []
    for n in range(10):  # seen in frames 0..9 at 0.0..0.9 s
        out, events = tracker.update((_person(box),), n * 0.1)
        timeline.append((out[0].track_id, [(e.event, e.track_id) for e in events]))
    assert timeline[0] == (None, [])
    assert timeline[1] == (1, [("enter", 1)])
    assert all(t == (1, []) for t in timeline[2:])
    assert tracker.active == 1 and not tracker.pending
    leaves = []
    for n in range(10, 15):  # gone from frame 10: missed 1, 2, 3 ... leave at the 4th
        out, events = tracker.update((), n * 0.1)
        assert out == ()
        leaves.append(events)
        if n < 13:
            assert tracker.pending
    assert leaves[:3] == [[], [], []] and leaves[4] == []
    (leave,) = leaves[3]
    assert (leave.event, leave.track_id, leave.label, leave.pipeline) == ("leave", 1, "person",
                                                                          "door")
    assert leave.dwell_s == pytest.approx(0.9)
    assert leave.ts == pytest.approx(1.3)
    assert leave.box == pytest.approx(box)
    assert tracker.active == 0 and not tracker.pending


def test_a_short_gap_keeps_the_id() -> None:
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=1, max_missed=3), "p")
    box = (0.4, 0.4, 0.6, 0.8)
    first, _ = tracker.update((_person(box),), 0.0)
    tracker.update((), 0.1)
    tracker.update((), 0.2)
    again, events = tracker.update((_person(box),), 0.3)
    assert again[0].track_id == first[0].track_id == 1 and events == []


def test_a_single_frame_flicker_never_enters() -> None:
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=2), "p")
    out, events = tracker.update((_person((0.1, 0.1, 0.2, 0.2)),), 0.0)
    assert out[0].track_id is None and events == []
    out, events = tracker.update((), 0.1)
    assert events == [] and tracker.active == 0 and tracker.next_id == 1


def test_labels_never_match_each_other() -> None:
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=1), "p")
    box = (0.2, 0.2, 0.5, 0.5)
    out, events = tracker.update((_person(box), _person(box, "car")), 0.0)
    assert [d.track_id for d in out] == [1, 2]
    out, _ = tracker.update((_person(box, "car"), _person(box)), 0.1)  # order swapped
    assert [d.track_id for d in out] == [2, 1]
    assert [(e.label, e.class_id) for e in events] == [("person", 0), ("car", 2)]


def test_many_objects_keep_their_ids_and_order() -> None:
    rng = np.random.default_rng(1)
    corners = rng.uniform(0, 0.85, size=(20, 2))
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=1), "p")
    first = None
    for n in range(30):
        dets = tuple(_person((x + 0.002 * n, y, x + 0.002 * n + 0.08, y + 0.12),
                             "person" if i % 2 else "car") for i, (x, y) in enumerate(corners))
        out, _ = tracker.update(dets, n * 0.1)
        ids = [d.track_id for d in out]
        first = first or ids
        assert ids == first
        assert [d.box for d in out] == [d.box for d in dets]  # same order, only ids added
    assert sorted(first or []) == list(range(1, 21))


def test_reset_makes_everyone_leave() -> None:
    tracker = IouTracker(TrackingConfig(enabled=True, min_hits=1), "p")
    tracker.update((_person((0.1, 0.1, 0.2, 0.3)), _person((0.6, 0.1, 0.7, 0.3))), 5.0)
    tracker.update((_person((0.1, 0.1, 0.2, 0.3)), _person((0.6, 0.1, 0.7, 0.3))), 7.0)
    events = tracker.reset(8.0)
    assert [(e.event, e.track_id, e.dwell_s) for e in events] == [("leave", 1, 2.0),
                                                                  ("leave", 2, 2.0)]
    assert tracker.active == 0


def test_iou_and_greedy_match() -> None:
    a = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], dtype=np.float64)
    b = np.array([[0, 0, 0.5, 0.5], [2, 2, 3, 3], [0, 0, 0, 0]], dtype=np.float64)
    iou = iou_matrix(a, b)
    assert iou == pytest.approx(np.array([[0.25, 0, 0], [1, 0, 0]]))
    assert greedy_match(iou, 0.2) == [(1, 0)]  # row 1 takes column 0 first; row 0 is left
