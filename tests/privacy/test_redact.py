"""Redaction and the tiled face finder, with small fake detectors."""

from __future__ import annotations

import itertools

import numpy as np

from edge_agent.privacy.redact import TiledFaceFinder, expand_box, merge_boxes, redact


def test_fill_and_blur_touch_only_the_expanded_box():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    box = (0.4, 0.4, 0.6, 0.6)
    x0, y0, x1, y1 = expand_box(box)
    for mode in ("fill", "blur"):
        out = redact(image.copy(), [box], mode)
        inside = out[int(y0 * 100) + 1:int(y1 * 100) - 1, int(x0 * 200) + 1:int(x1 * 200) - 1]
        if mode == "fill":
            assert not inside.any()
        else:  # a smooth gradient: no pixel differs much from its neighbour
            assert np.abs(np.diff(inside.astype(int), axis=1)).max() <= 8
        outside = np.ones((100, 200), bool)
        outside[int(y0 * 100):int(np.ceil(y1 * 100)), int(x0 * 200):int(np.ceil(x1 * 200))] = False
        assert np.array_equal(out[outside], image[outside])


def test_expand_and_merge_never_shrink():
    assert expand_box((0.0, 0.0, 0.1, 0.1)) == (0.0, 0.0, 0.13, 0.13)
    merged = merge_boxes([(0.1, 0.1, 0.3, 0.3), (0.12, 0.12, 0.32, 0.32), (0.7, 0.7, 0.8, 0.8)])
    assert (0.1, 0.1, 0.32, 0.32) in merged and len(merged) == 2


class _Recording:
    def __init__(self, face_at: tuple[int, int] | None = None) -> None:
        self.shapes: list[tuple[int, int]] = []
        self.face_at = face_at

    def __call__(self, image: np.ndarray) -> list:
        self.shapes.append(image.shape[:2])
        return []


def test_tiles_cover_a_720p_frame_at_two_scales():
    finder = TiledFaceFinder(_Recording())
    tiles = finder.tiles(1280, 720)
    assert len(tiles) == 18 and {s for _, _, s in tiles} == {720, 360}
    for side in (720, 360):
        xs = sorted({x for x, _, s in tiles if s == side})
        assert xs[0] == 0 and xs[-1] + side == 1280
        assert all(b - a < side for a, b in itertools.pairwise(xs))  # overlapping, no gaps


def test_tile_boxes_map_back_to_the_frame():
    def detect(image: np.ndarray) -> list:
        h, w = image.shape[:2]
        return [(0.25, 0.25, 0.5, 0.5)] if (h, w) == (360, 360) else []

    finder = TiledFaceFinder(detect)
    boxes = finder(np.zeros((720, 1280, 3), np.uint8))
    assert boxes and all(0 <= v <= 1 for b in boxes for v in b)


def test_recheck_runs_only_tiles_touching_changed_regions():
    rec = _Recording()
    finder = TiledFaceFinder(rec)
    image = np.zeros((720, 1280, 3), np.uint8)
    finder(image)
    full = len(rec.shapes)
    rec.shapes.clear()
    finder(image, changed=[(0.01, 0.01, 0.05, 0.05)])  # the top-left corner only
    assert len(rec.shapes) < full / 3
    assert rec.shapes[0] == (720, 1280)  # the whole frame always runs
