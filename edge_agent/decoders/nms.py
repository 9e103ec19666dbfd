"""Non-maximum suppression in numpy: plain (greedy), class-aware, and MediaPipe's weighted.

Boxes are ``(N, 4)`` float32 xyxy in any consistent unit. The greedy loop runs once per *kept*
box, each step vectorised over all remaining candidates, so the cost is tiny once candidates
have been filtered by score.
"""

from __future__ import annotations

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box (4,) with each of ``boxes`` (M, 4) -> (M,)."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes (N, 4) x (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float64)[:, None, :]
    b = np.asarray(b, dtype=np.float64)[None, :, :]
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0,
                       None))
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        classes: np.ndarray | None = None, max_detections: int = 100) -> np.ndarray:
    """Greedy NMS; with ``classes`` only boxes of the same class suppress each other.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) confidences.
        iou_threshold: a box whose IoU with a kept box is above this is dropped.
        classes: (N,) integer class ids for class-aware NMS, or None.
        max_detections: stop after this many kept boxes.

    Returns:
        Indices into ``boxes`` of the kept boxes, best score first.
    """
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    b = np.asarray(boxes, dtype=np.float32)
    if classes is not None:
        # shift each class into its own region so boxes of different classes never overlap
        span = float(np.max(b) - np.min(b)) + 1.0
        b = b + (np.asarray(classes, dtype=np.float32) * span)[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        order = rest[iou_one_to_many(b[i], b[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                 extra: np.ndarray | None = None, max_detections: int = 100
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of its cluster.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) confidences.
        iou_threshold: candidates with IoU above this with the best remaining box join its
            cluster (MediaPipe's ``min_suppression_threshold``).
        extra: (N, K) values averaged the same way (keypoints), or None.
        max_detections: stop after this many clusters.

    Returns:
        ``(boxes (M, 4), scores (M,), extra (M, K) or None)``; the score of a cluster is that of
        its best member.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    out_b: list[np.ndarray] = []
    out_s: list[float] = []
    out_e: list[np.ndarray] = []
    b = np.asarray(boxes, dtype=np.float32)
    while order.size and len(out_b) < max_detections:
        best = order[0]
        ious = iou_one_to_many(b[best], b[order])
        ious[0] = np.inf  # the best box always joins its own cluster (even with zero area)
        members = order[ious > iou_threshold]
        w = np.asarray(scores, dtype=np.float32)[members]
        w = w / max(float(w.sum()), 1e-12)
        out_b.append((b[members] * w[:, None]).sum(axis=0))
        out_s.append(float(scores[best]))
        if extra is not None:
            out_e.append((extra[members] * w[:, None]).sum(axis=0))
        order = order[ious <= iou_threshold]
    ob = np.asarray(out_b, dtype=np.float32).reshape(-1, 4)
    os_ = np.asarray(out_s, dtype=np.float32)
    oe = None
    if extra is not None:
        oe = np.asarray(out_e, dtype=np.float32).reshape(len(out_b), extra.shape[1])
    return ob, os_, oe
