"""YOLOv5 / YOLOv8 raw detection heads (no NMS in the model).

Layouts (batch 1, one output tensor):

* YOLOv5: ``[1, N, 5+C]`` rows of ``cx, cy, w, h, objectness, C class scores``;
  confidence = objectness x class score.
* YOLOv8: ``[1, 4+C, N]`` (channels first) of ``cx, cy, w, h, C class scores``; no objectness.

``version: auto`` takes the layout as the hint (rows-last -> v5, channels-first -> v8) unless the
label count says otherwise (``5+C`` vs ``4+C`` channels). The tensor is dequantised with its own
scale and zero point. Coordinates may be normalised (0..1) or in input pixels: when the
candidates' coordinates exceed 2 they are divided by the input size. Candidates are filtered
by score on the quantised values first, so only a few rows of the 25200 are dequantised;
then class-aware NMS, then the letterbox is undone through the transform.

Options: ``version`` (auto|5|8), ``iou_threshold`` (0.45), ``max_detections`` (100),
``max_candidates`` (1000: the best candidates that go into NMS; bounds the cost of a low
threshold),
``labels_skip_na`` (auto: drop ``n/a`` gaps when the file's real names match the class count),
``label_offset`` (int), ``coordinates`` (auto|normalized|pixels).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_agent.config import YoloOptions
from edge_agent.decoders.base import input_size, misfit, squeeze_batch, typed_options
from edge_agent.decoders.labels import Labels, Namer
from edge_agent.decoders.nms import nms
from edge_agent.types import Detection, Inference, ModelSignature, Transform

EXPECTED = "1 output [1,N,5+C] (YOLOv5) or [1,4+C,N] (YOLOv8) with N much larger than C"


class YoloDecoder:
    """Decoder for raw YOLOv5/v8 outputs, with class-aware NMS in numpy."""

    kind = "yolo"
    letterbox = True

    def __init__(self, signature: ModelSignature, labels: Labels,
                 options: YoloOptions | Mapping[str, object] | None,
                 score_threshold: float) -> None:
        """Check the output layout and resolve version, labels and options.

        Raises:
            ModelError: the model does not have one YOLO-shaped output.
            ConfigError: an unknown or bad option.
        """
        opts = typed_options(YoloOptions, options)
        version = opts.version
        self.iou_threshold = opts.iou_threshold
        self.max_detections = opts.max_detections
        self.max_candidates = opts.max_candidates
        skip = opts.labels_skip_na
        offset = opts.label_offset
        self.coordinates = opts.coordinates
        outs = signature.outputs
        if len(outs) != 1 or outs[0].dtype == "int64":
            raise misfit(self.kind, EXPECTED, signature)
        shape = squeeze_batch(outs[0].shape)
        if len(shape) != 2 or min(shape) < 6 or max(shape) < 4 * min(shape):
            raise misfit(self.kind, EXPECTED, signature)
        self.transposed = shape[0] < shape[1]  # channels first: [4+C, N]
        channels = min(shape)
        v = str(version).lstrip("v")
        if v == "auto":
            if labels.count and labels.count == channels - 5 and channels - 4 != len(labels):
                v = "5"
            elif labels.count and labels.count == channels - 4:
                v = "8"
            else:
                v = "8" if self.transposed else "5"
        self.version = int(v)
        self.num_classes = channels - (5 if self.version == 5 else 4)
        if self.num_classes < 1:
            raise misfit(self.kind, EXPECTED, signature)
        self.labels = labels.fit(self.num_classes, offset=offset,
                                 compact=None if skip == "auto" else bool(skip))
        self.name = Namer(self.labels)
        self.spec = outs[0]
        self.score_threshold = float(score_threshold)
        self.input_w, self.input_h = input_size(signature)

    def _quantised_threshold(self, value: float) -> float:
        """``value`` in the tensor's stored units, so filtering needs no dequantisation."""
        spec = self.spec
        if spec.quantized and spec.scale > 0:
            return value / spec.scale + spec.zero_point
        return value

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Detections after score filter and class-aware NMS, on the original frame."""
        spec = self.spec
        q = np.asarray(outputs[0]).reshape(squeeze_batch(spec.shape))
        if self.transposed:
            q = q.T  # (N, 4+C) view, no copy
        # conf = obj * cls <= obj (v5) and = cls (v8): a cheap pre-filter on stored values
        thr_q = self._quantised_threshold(self.score_threshold)
        if self.version == 5:
            cand = np.nonzero(q[:, 4] >= thr_q)[0]
        else:
            cand = np.nonzero(q[:, 4:].max(axis=1) >= thr_q)[0]
        if cand.size == 0:
            return Inference()
        sub = q[cand]  # (M, 4+C[+1]) in stored units
        first = 5 if self.version == 5 else 4
        # dequantisation is monotonic (scale > 0), so the best class is found on stored values
        cls = np.argmax(sub[:, first:], axis=1)
        conf = spec.dequantize(sub[np.arange(len(cls)), first + cls])
        if self.version == 5:
            conf = conf * spec.dequantize(sub[:, 4])
        keep = np.nonzero(conf >= self.score_threshold)[0]
        if keep.size == 0:
            return Inference()
        if keep.size > self.max_candidates:
            # a very low threshold lets thousands through: NMS only the best ones
            keep = keep[np.argpartition(-conf[keep], self.max_candidates - 1)
                        [:self.max_candidates]]
        cls, conf = cls[keep], conf[keep]
        xywh = spec.dequantize(sub[keep, :4])
        pixels = self.coordinates == "pixels" or (
            self.coordinates == "auto" and float(np.max(np.abs(xywh))) > 2.0)
        if pixels and self.input_w and self.input_h:
            xywh = xywh / np.array([self.input_w, self.input_h, self.input_w, self.input_h],
                                   dtype=np.float32)
        xyxy = np.empty_like(xywh)
        xyxy[:, 0] = xywh[:, 0] - xywh[:, 2] / 2
        xyxy[:, 1] = xywh[:, 1] - xywh[:, 3] / 2
        xyxy[:, 2] = xywh[:, 0] + xywh[:, 2] / 2
        xyxy[:, 3] = xywh[:, 1] + xywh[:, 3] / 2
        kept = nms(xyxy, conf, self.iou_threshold, classes=cls,
                   max_detections=self.max_detections)
        framed = transform.to_frame(xyxy[kept])
        dets = tuple(
            Detection(class_id=int(c), label=self.name(int(c)), score=float(s),
                      box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])))
            for c, s, b in zip(cls[kept].tolist(), conf[kept].tolist(), framed, strict=True)
        )
        return Inference(detections=dets)
