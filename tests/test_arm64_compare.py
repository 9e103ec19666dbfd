"""The arm64-against-x86 comparison of ``./dev arm64`` (tests/system/compare.py), on constructed
detection lists: no VM, no model."""

from __future__ import annotations

from tests.system.compare import BAND_STEPS, Det, compare_image, describe

STEP = 1 / 256
T = 0.5

# zidane.jpg from the run of 2 December 2026 (report.json of /work/h1-arm64/run2), as published
ZIDANE_X86 = [Det("person", 0.7188, (0.563, 0.035, 0.877, 0.986)),
              Det("person", 0.6094, (0.092, 0.252, 0.535, 0.996)),
              Det("person", 0.5234, (0.59, 0.044, 0.86, 0.617)),
              Det("person", 0.5234, (0.181, 0.289, 0.732, 0.997)),
              Det("person", 0.5, (0.848, 0.297, 0.999, 0.997))]
ZIDANE_ARM = [Det("person", 0.7188, (0.563, 0.035, 0.877, 0.986)),
              Det("person", 0.6211, (0.095, 0.252, 0.538, 0.996)),
              Det("person", 0.5234, (0.59, 0.044, 0.86, 0.617)),
              Det("person", 0.5117, (0.289, 0.286, 0.649, 0.996)),
              Det("person", 0.5, (0.848, 0.297, 0.999, 0.997))]


def q(k: int) -> float:
    """A score k uint8 steps above the threshold, rounded as results publish it."""
    return round(T + k * STEP, 4)


def run(x86: list[Det], arm: list[Det]) -> tuple[list[str], list[dict[str, object]]]:
    out = compare_image("img.jpg", x86, arm, T, STEP)
    return out.problems, out.near_threshold


def test_identical_and_slightly_shifted_lists_match_without_notes() -> None:
    x86 = [Det("cat", 0.7188, (0.091, 0.131, 0.708, 0.977)), Det("tie", q(2), (0.4, 0.7, 0.5, 0.9))]
    arm = [Det("cat", 0.7305, (0.086, 0.131, 0.703, 0.977)), Det("tie", q(1), (0.4, 0.7, 0.5, 0.9))]
    assert run(x86, arm) == ([], [])
    assert run([], []) == ([], [])


def test_the_zidane_nms_swap_is_a_listed_near_threshold_difference() -> None:
    out = compare_image("zidane.jpg", ZIDANE_X86, ZIDANE_ARM, T, STEP)
    assert out.problems == []
    assert len(out.near_threshold) == 1
    note = out.near_threshold[0]
    assert note["x86"] == {"label": "person", "score": 0.5234, "box": [0.181, 0.289, 0.732, 0.997]}
    assert note["arm64"] == {"label": "person", "score": 0.5117,
                             "box": [0.289, 0.286, 0.649, 0.996]}
    assert 0.5 <= note["iou"] < 0.9
    line = describe(note)
    assert "x86 person 0.5234" in line and "arm64 person 0.5117" in line


def test_a_near_threshold_box_may_be_absent_on_either_side_and_is_listed() -> None:
    conf = Det("person", 0.8, (0.1, 0.1, 0.5, 0.9))
    low = Det("person", q(3), (0.6, 0.1, 0.9, 0.9))
    problems, notes = run([conf, low], [conf])
    assert problems == []
    assert notes == [{"image": "img.jpg", "x86": low.as_json(), "arm64": None, "iou": None}]
    problems, notes = run([conf], [conf, low])
    assert problems == [] and notes[0]["x86"] is None and notes[0]["arm64"] == low.as_json()


def test_band_edge() -> None:
    conf = Det("person", 0.8, (0.1, 0.1, 0.5, 0.9))
    at_edge = Det("dog", q(BAND_STEPS), (0.6, 0.1, 0.9, 0.9))
    past_edge = Det("dog", q(BAND_STEPS + 1), (0.6, 0.1, 0.9, 0.9))
    assert run([conf, at_edge], [conf])[0] == []
    problems, _ = run([conf, past_edge], [conf])
    assert len(problems) == 1 and "x86 dog" in problems[0] and "no arm64 counterpart" in problems[0]


def test_a_missing_confident_detection_fails() -> None:
    conf = Det("person", 0.8, (0.1, 0.1, 0.5, 0.9))
    other = Det("car", 0.7, (0.6, 0.6, 0.8, 0.8))
    problems, _ = run([conf, other], [conf])
    assert len(problems) == 1 and "x86 car 0.7000" in problems[0]
    problems, _ = run([conf], [conf, other])
    assert len(problems) == 1 and "arm64 car" in problems[0] and "no x86 counterpart" in problems[0]


def test_a_different_label_fails() -> None:
    box = (0.1, 0.1, 0.5, 0.9)
    problems, _ = run([Det("cat", 0.8, box)], [Det("dog", 0.8, box)])
    assert len(problems) == 2  # each side's confident box lacks a same-label counterpart
    # also when the arm64 side's wrong label is itself near the threshold
    problems, _ = run([Det("cat", 0.8, box)], [Det("dog", q(1), box)])
    assert len(problems) == 1 and "x86 cat" in problems[0]


def test_a_shifted_confident_box_fails() -> None:
    a = Det("person", 0.8, (0.10, 0.10, 0.50, 0.90))
    b = Det("person", 0.8, (0.15, 0.10, 0.55, 0.90))  # IoU 0.78
    problems, _ = run([a], [b])
    assert len(problems) == 2 and "best IoU 0.778" in problems[0]
    # a confident box is not excused by a near-threshold, loosely overlapping counterpart
    problems, notes = run([a], [Det("person", q(2), b.box)])
    assert len(problems) == 1 and "x86 person 0.8000" in problems[0]
    assert notes[0]["x86"] is None


def test_matching_is_one_to_one() -> None:
    a = Det("person", 0.8, (0.1, 0.1, 0.5, 0.9))
    twin = Det("person", 0.75, (0.1, 0.1, 0.5, 0.91))
    problems, _ = run([a, twin], [a])
    assert len(problems) == 1 and "x86 person 0.7500" in problems[0]


def test_near_threshold_boxes_too_far_apart_are_listed_as_two_absences() -> None:
    conf = Det("person", 0.8, (0.0, 0.0, 0.2, 0.2))
    left = Det("person", q(1), (0.1, 0.1, 0.5, 0.9))
    right = Det("person", q(2), (0.6, 0.1, 0.9, 0.9))
    problems, notes = run([conf, left], [conf, right])
    assert problems == []
    assert [(n["x86"] is None, n["arm64"] is None) for n in notes] == [(False, True),
                                                                       (True, False)]


def test_det_of_reads_results_and_report_triples() -> None:
    assert Det.of({"label": "cat", "score": 0.7, "box": [0, 0, 1, 1]}) == \
        Det.of(["cat", 0.7, [0, 0, 1, 1]]) == Det("cat", 0.7, (0, 0, 1, 1))
