"""BlazeFace / BlazePose style SSD heads decoded against generated anchors.

The anchors follow MediaPipe's ``SsdAnchorsCalculator`` (``generate_anchors``); decoding
follows ``TensorsToDetectionsCalculator``: for anchor ``(ax, ay, aw, ah)`` and regressors
``reg``, ``cx = reg[0] / scale * aw + ax``, ``cy = reg[1] / scale * ah + ay``,
``w = reg[2] / scale * aw``, ``h = reg[3] / scale * ah``, keypoint ``k`` at
``reg[4+2k] / scale * aw + ax`` (and y alike); score = sigmoid(logit). Then weighted NMS
(MediaPipe's default for these models) or plain NMS, and the letterbox is undone.

Presets, chosen by the number of anchors (the output's A) unless ``preset`` is set:

=============== ===== ======= ================== ============ =======
preset          A     input   strides            anchors/cell label
=============== ===== ======= ================== ============ =======
face_short      896   128     8,16,16,16         2            face
face_full       2304  192     4                  1            face
pose            2254  224     8,16,32,32,32      2            person
=============== ===== ======= ================== ============ =======

Options: ``preset``; or anchor options ``num_layers``, ``strides``, ``min_scale``,
``max_scale``, ``anchor_offset_x``/``anchor_offset_y``, ``aspect_ratios``,
``interpolated_scale_aspect_ratio``, ``fixed_anchor_size``, ``reduce_boxes_in_lowest_layer``,
``input_size`` ([w, h]); ``box`` (``detector``: the regressed box; ``body``: a square around
the circle through keypoints 0 and 1, the default for ``pose``, whose regressed box is the
face); ``scale`` (box scale, default: input size); ``label`` (the name of the
single class; default: the label file's first line, else the preset's name); ``nms``
(weighted|plain), ``iou_threshold`` (0.3), ``max_detections`` (100).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_agent.config import AnchorsOptions
from edge_agent.decoders.base import (
    input_size,
    misfit,
    option_error,
    sigmoid,
    squeeze_batch,
    typed_options,
)
from edge_agent.decoders.labels import Labels, LabelsMismatchError
from edge_agent.decoders.nms import nms, weighted_nms
from edge_agent.types import Detection, Inference, ModelSignature, Transform

EXPECTED = "2 outputs regressors [1,A,4+2K] and scores [1,A,1]"


@dataclass(frozen=True, slots=True)
class AnchorOptions:
    """MediaPipe ``SsdAnchorsCalculatorOptions`` (the fields these models use)."""

    input_w: int
    input_h: int
    num_layers: int
    strides: tuple[int, ...]
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False


@dataclass(frozen=True, slots=True)
class Preset:
    """A known model family: its anchors and the name of its single class."""

    name: str
    anchors: AnchorOptions
    label: str
    box: str = "detector"


PRESETS: dict[str, Preset] = {
    "face_short": Preset("face_short", AnchorOptions(128, 128, 4, (8, 16, 16, 16)), "face"),
    "face_full": Preset("face_full", AnchorOptions(
        192, 192, 1, (4,), interpolated_scale_aspect_ratio=0.0), "face"),
    # BlazePose's regressed box is the *face* (its proxy for a person); keypoints 0 and 1 are
    # the hip midpoint and a point on the circle around the whole body: "body" uses the circle
    "pose": Preset("pose", AnchorOptions(224, 224, 5, (8, 16, 32, 32, 32)), "person", "body"),
}
PRESET_BY_COUNT = {896: "face_short", 2304: "face_full", 2254: "pose"}


def _calc_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) / 2
    return min_scale + (max_scale - min_scale) * index / (count - 1)


def generate_anchors(o: AnchorOptions) -> np.ndarray:
    """MediaPipe's SSD anchors as an (A, 4) float32 array of ``(cx, cy, w, h)``, normalised."""
    out: list[np.ndarray] = []
    layer = 0
    while layer < o.num_layers:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        # layers sharing a stride are merged into one feature map with more anchors per cell
        while last < o.num_layers and o.strides[last] == o.strides[layer]:
            scale = _calc_scale(o.min_scale, o.max_scale, last, o.num_layers)
            if last == 0 and o.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ar in o.aspect_ratios:
                    ratios.append(ar)
                    scales.append(scale)
                if o.interpolated_scale_aspect_ratio > 0:
                    nxt = 1.0 if last == o.num_layers - 1 else _calc_scale(
                        o.min_scale, o.max_scale, last + 1, o.num_layers)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(o.interpolated_scale_aspect_ratio)
            last += 1
        r = np.sqrt(np.asarray(ratios, dtype=np.float64))
        widths = np.asarray(scales) * r
        heights = np.asarray(scales) / r
        stride = o.strides[layer]
        fh, fw = math.ceil(o.input_h / stride), math.ceil(o.input_w / stride)
        ys, xs = np.meshgrid((np.arange(fh) + o.anchor_offset_y) / fh,
                             (np.arange(fw) + o.anchor_offset_x) / fw, indexing="ij")
        n = len(ratios)
        grid = np.empty((fh, fw, n, 4), dtype=np.float64)
        grid[..., 0] = xs[..., None]
        grid[..., 1] = ys[..., None]
        grid[..., 2] = 1.0 if o.fixed_anchor_size else widths
        grid[..., 3] = 1.0 if o.fixed_anchor_size else heights
        out.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(out).astype(np.float32)


def _anchor_options(opts: AnchorsOptions, base: AnchorOptions | None, in_w: int,
                    in_h: int) -> AnchorOptions | None:
    """Anchor options from the config, on top of a preset (or from scratch)."""
    fields: dict[str, Any] = {
        key: getattr(opts, key) for key in (
            "min_scale", "max_scale", "anchor_offset_x", "anchor_offset_y",
            "interpolated_scale_aspect_ratio", "num_layers", "strides", "aspect_ratios",
            "fixed_anchor_size", "reduce_boxes_in_lowest_layer")
        if getattr(opts, key) is not None}
    if opts.input_size is not None:
        fields["input_w"], fields["input_h"] = opts.input_size
    if base is None:
        if "strides" not in fields:
            return None
        fields.setdefault("num_layers", len(fields["strides"]))
        fields.setdefault("input_w", in_w)
        fields.setdefault("input_h", in_h)
        if len(fields["strides"]) != fields["num_layers"]:
            raise option_error(opts.decoder, "strides", "expected num_layers entries",
                               opts.strides)
        return AnchorOptions(**fields)
    return replace(base, **fields)


def _one_name(labels: Labels, preset: Preset | None) -> str:
    """The label file's name for the one class an anchors model detects.

    Raises:
        LabelsMismatchError: the file names more or fewer than one class (e.g. COCO labels on
            a face detector would publish every face as ``person``).
    """
    names = labels.compact()
    if len(names) == 1:
        return names.get(0)
    what = f"{preset.label} " if preset else ""
    few = "too few" if len(names) < 1 else "too many"
    raise LabelsMismatchError(
        f"label file {labels.source} does not fit the model: {len(names)} names, but an "
        f"anchors model detects one class ({what}only; {few}: use a file with one name, or "
        "decoder_options label)")


class AnchorsDecoder:
    """BlazeFace / BlazePose detector heads: boxes, keypoints and scores per anchor."""

    kind = "anchors"
    letterbox = True

    def __init__(self, signature: ModelSignature, labels: Labels,
                 options: AnchorsOptions | Mapping[str, object] | None,
                 score_threshold: float) -> None:
        """Match regressors and scores by shape, generate anchors, resolve options.

        Raises:
            ModelError: the outputs are not [1,A,4+2K] + [1,A,1], or the anchors do not match A.
            ConfigError: an unknown or bad option.
        """
        outs = signature.outputs
        if len(outs) != 2:
            raise misfit(self.kind, EXPECTED, signature)
        shapes = [squeeze_batch(t.shape) for t in outs]
        if any(len(s) != 2 for s in shapes):
            raise misfit(self.kind, EXPECTED, signature)
        self._reg, self._cls = (0, 1) if shapes[1][1] == 1 else (1, 0)
        reg_shape, cls_shape = shapes[self._reg], shapes[self._cls]
        if (cls_shape[1] != 1 or reg_shape[0] != cls_shape[0] or reg_shape[1] < 4
                or reg_shape[1] % 2):
            raise misfit(self.kind, EXPECTED, signature)
        count = reg_shape[0]
        in_w, in_h = input_size(signature)
        opts = typed_options(AnchorsOptions, options)
        preset_name: str = opts.preset or PRESET_BY_COUNT.get(count, "none")
        preset = PRESETS.get(preset_name)
        anchor_opts = _anchor_options(opts, preset.anchors if preset else None, in_w, in_h)
        # the class name: the option, else the label file's one name, else the preset's
        label = opts.label if opts.label is not None else (
            _one_name(labels, preset) if len(labels) else preset.label if preset else "object")
        self.scale = opts.scale if opts.scale is not None else float(
            anchor_opts.input_w if anchor_opts else in_w)
        self.box = opts.box or (preset.box if preset else "detector")
        self.nms = opts.nms
        self.iou_threshold = opts.iou_threshold
        self.max_detections = opts.max_detections
        if anchor_opts is None:
            raise misfit(self.kind, f"{EXPECTED} with A in {sorted(PRESET_BY_COUNT)} (or set "
                         "decoder_options preset / strides)", signature)
        self.anchors = generate_anchors(anchor_opts)
        if len(self.anchors) != count:
            raise misfit(self.kind, f"{EXPECTED} with A = {len(self.anchors)} anchors from the "
                         "anchor options", signature)
        self.preset = preset_name
        self.num_keypoints = (reg_shape[1] - 4) // 2
        if self.box == "body" and self.num_keypoints < 2:
            raise option_error(self.kind, "box",
                               "body boxes need 2 keypoints (centre and circle point)")
        self.label = str(label)
        self.specs = outs
        self.score_threshold = float(score_threshold)
        # sigmoid(x) >= t  <=>  x >= logit(t): filter on logits, sigmoid only the survivors
        t = min(max(self.score_threshold, 1e-6), 1 - 1e-6)
        self._logit_threshold = math.log(t / (1 - t))

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Detections with keypoints, on the original frame."""
        logits = self.specs[self._cls].dequantize(np.asarray(outputs[self._cls])).reshape(-1)
        cand = np.nonzero(logits >= self._logit_threshold)[0]
        if cand.size == 0:
            return Inference()
        reg = self.specs[self._reg].dequantize(np.asarray(outputs[self._reg]))
        reg = reg.reshape(len(self.anchors), -1)[cand] / np.float32(self.scale)
        anc = self.anchors[cand]
        scores = sigmoid(logits[cand])
        # fixed-size anchors have w = h = 1, so this matches MediaPipe for both kinds
        cx = reg[:, 0] * anc[:, 2] + anc[:, 0]
        cy = reg[:, 1] * anc[:, 3] + anc[:, 1]
        w = reg[:, 2] * anc[:, 2]
        h = reg[:, 3] * anc[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        kp = reg[:, 4:4 + 2 * self.num_keypoints].reshape(-1, self.num_keypoints, 2)
        kp = (kp * anc[:, None, 2:4] + anc[:, None, 0:2]).reshape(len(cand), -1)
        if self.nms == "weighted":
            boxes, scores, kp_out = weighted_nms(boxes, scores, self.iou_threshold, kp,
                                                 self.max_detections)
            kp = kp_out if kp_out is not None else kp[:0]
        else:
            keep = nms(boxes, scores, self.iou_threshold, max_detections=self.max_detections)
            boxes, scores, kp = boxes[keep], scores[keep], kp[keep]
        if self.box == "body":
            # a square around the circle centred on keypoint 0 through keypoint 1 (model
            # coordinates are isotropic: the input is square and letterboxed)
            centre, edge = kp[:, 0:2], kp[:, 2:4]
            r = np.linalg.norm(edge - centre, axis=1, keepdims=True)
            boxes = np.concatenate([centre - r, centre + r], axis=1)
        framed = transform.to_frame(boxes)
        kp_xy = kp.reshape(-1, 2)
        kp_frame = transform.to_frame(np.concatenate([kp_xy, kp_xy], axis=1))[:, :2]
        kp_frame = kp_frame.reshape(len(boxes), self.num_keypoints, 2)
        dets = tuple(
            Detection(class_id=0, label=self.label, score=float(s),
                      box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                      keypoints=tuple((float(x), float(y)) for x, y in k))
            for s, b, k in zip(scores.tolist(), framed, kp_frame, strict=True)
        )
        return Inference(detections=dets)
