"""A small test-side BlazeFace full-range face detector (MANIFEST.md decode).

Used by the privacy tests and the benchmark until the agent's anchors decoder is wired in:
letterbox to 192x192, RGB float in [-1, 1], 48x48 anchors (stride 4, offset 0.5), boxes
``cx = reg[0]/192 + ax`` etc., sigmoid scores, greedy NMS.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_agent.runtime.interpreter import load_runtime
from edge_agent.types import Box

SIZE = 192


class BlazeFaceFull:
    """``detect(image_bgr) -> list[Box]`` normalised to the image; ``max_score`` seen so far."""

    def __init__(self, model: Path, threshold: float = 0.5, threads: int = 2) -> None:
        self.runtime = load_runtime(model, threads=threads)
        self.threshold = threshold
        g = (np.arange(48, dtype=np.float32) + 0.5) / 48
        ax, ay = np.meshgrid(g, g)
        self.anchors = np.stack([ax.ravel(), ay.ravel()], axis=1)  # (2304, 2)
        out = self.runtime.signature.outputs
        self._reg = next(i for i, t in enumerate(out) if t.shape[-1] == 16)
        self._cls = next(i for i, t in enumerate(out) if t.shape[-1] == 1)
        self._buf = np.zeros((1, SIZE, SIZE, 3), np.float32)
        self.calls = 0
        self.max_score = 0.0

    def close(self) -> None:
        self.runtime.close()

    def __call__(self, image: np.ndarray) -> list[Box]:
        self.calls += 1
        h, w = image.shape[:2]
        s = SIZE / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        px, py = (SIZE - nw) // 2, (SIZE - nh) // 2
        rgb = cv2.cvtColor(cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA),
                           cv2.COLOR_BGR2RGB)
        self._buf.fill(0.0)
        self._buf[0, py:py + nh, px:px + nw] = rgb.astype(np.float32) / 127.5 - 1.0
        outs = self.runtime.infer([self._buf])
        reg = outs[self._reg].reshape(-1, 16)
        scores = 1.0 / (1.0 + np.exp(-np.clip(outs[self._cls].reshape(-1), -80, 80)))
        self.max_score = max(self.max_score, float(scores.max()))
        keep = np.flatnonzero(scores >= self.threshold)
        if keep.size == 0:
            return []
        cx = reg[keep, 0] / SIZE + self.anchors[keep, 0]
        cy = reg[keep, 1] / SIZE + self.anchors[keep, 1]
        bw, bh = reg[keep, 2] / SIZE, reg[keep, 3] / SIZE
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        # model-normalised (letterboxed) -> image-normalised
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] * SIZE - px) / nw
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] * SIZE - py) / nh
        boxes = np.clip(boxes, 0.0, 1.0)
        order = np.argsort(-scores[keep])
        picked: list[np.ndarray] = []
        for i in order:
            b = boxes[i]
            if all(_iou(b, p) < 0.3 for p in picked):
                picked.append(b)
        return [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in picked]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
