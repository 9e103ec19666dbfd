"""SSD models with TFLite_Detection_PostProcess: boxes, classes, scores and count.

The four outputs are found by shape and value, not by name or position, because exporters
disagree: TF1 exports give ``boxes [1,N,4], classes [1,N], scores [1,N], count [1]`` in that
order; TF2 exports name them ``StatefulPartitionedCall:3..0`` and order them differently. Boxes
are the ``[1,N,4]`` tensor and count the ``[1]`` one. Classes and scores have the same shape,
so they are told apart by their values: classes hold integers (one above 1 settles it),
scores hold fractions in [0, 1]. The pair is re-checked on each frame until a frame settles it
(an empty frame, all zeros, does not), then fixed; until then the TF1 order is assumed.

Options: ``label_offset`` (int; default: 1 when the label file starts with a background or
``???`` line, or is an ``id label`` file whose ids start at 1 as TF label maps do; else 0:
line ``i`` names class ``i``), ``max_detections`` (int).

The decoder keeps one piece of state (which output is classes), so one instance serves one
pipeline thread, like the interpreter it decodes for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from edge_agent.config import SsdOptions
from edge_agent.decoders.base import dequantize, misfit, squeeze_batch, typed_options
from edge_agent.decoders.labels import Labels, Namer
from edge_agent.types import Detection, Inference, ModelSignature, Transform

logger = logging.getLogger(__name__)

EXPECTED = "4 outputs boxes [1,N,4], classes [1,N], scores [1,N], count [1]"


def _is_integral(a: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))


class SsdDecoder:
    """Decoder for models whose graph ends in TFLite_Detection_PostProcess (NMS inside)."""

    kind = "ssd"
    letterbox = False

    def __init__(self, signature: ModelSignature, labels: Labels,
                 options: SsdOptions | Mapping[str, object] | None,
                 score_threshold: float) -> None:
        """Match the four outputs by shape; see the module docstring.

        Raises:
            ModelError: the outputs are not boxes/classes/scores/count.
            ConfigError: an unknown or bad option.
        """
        opts = typed_options(SsdOptions, options)
        offset = opts.label_offset
        if offset is None:
            offset = 1 if labels.has_background else 0
        self.max_detections = opts.max_detections
        self.labels = labels.shifted(offset) if offset else labels
        self.name = Namer(self.labels)
        self.score_threshold = float(score_threshold)
        outs = signature.outputs
        if len(outs) != 4:
            raise misfit(self.kind, EXPECTED, signature)
        shapes = [squeeze_batch(t.shape) if len(t.shape) > 1 else tuple(t.shape) for t in outs]
        boxes = [i for i, s in enumerate(shapes) if len(s) == 2 and s[1] == 4]
        count = [i for i, s in enumerate(shapes) if len(s) == 1 and s[0] == 1]
        if len(boxes) != 1 or len(count) != 1:
            raise misfit(self.kind, EXPECTED, signature)
        n = shapes[boxes[0]][0]
        pair = [i for i in range(4) if i not in (boxes[0], count[0])]
        if any(shapes[i] != (n,) for i in pair):
            raise misfit(self.kind, EXPECTED, signature)
        self._boxes, self._count = boxes[0], count[0]
        self._classes, self._scores = pair  # assumed TF1 order until values settle it
        self._settled = False
        self._specs = outs
        self.num_boxes = n

    def _settle(self, a: np.ndarray, b: np.ndarray) -> None:
        """Decide which of the two [N] outputs is classes by their values, once."""
        a_int, b_int = _is_integral(a), _is_integral(b)
        a_big, b_big = bool(np.any(a > 1.0)), bool(np.any(b > 1.0))
        if (a_int and not b_int) or (a_big and not b_big):
            order = (0, 1)
        elif (b_int and not a_int) or (b_big and not a_big):
            order = (1, 0)
        else:
            return
        first, second = self._classes, self._scores
        if order == (1, 0):
            self._classes, self._scores = second, first
        self._settled = True
        logger.debug("ssd: classes are output %d, scores output %d", self._classes,
                     self._scores)

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Detections above the score threshold, boxes mapped to the original frame."""
        specs = self._specs
        boxes = dequantize(specs[self._boxes], outputs[self._boxes]).reshape(-1, 4)
        if not self._settled:
            self._settle(dequantize(specs[self._classes], outputs[self._classes]).reshape(-1),
                         dequantize(specs[self._scores], outputs[self._scores]).reshape(-1))
        classes = dequantize(specs[self._classes], outputs[self._classes]).reshape(-1)
        scores = dequantize(specs[self._scores], outputs[self._scores]).reshape(-1)
        count = int(dequantize(specs[self._count], outputs[self._count]).reshape(-1)[0])
        n = max(0, min(count, len(scores), self.max_detections))
        keep = np.nonzero(scores[:n] >= self.score_threshold)[0]
        if keep.size == 0:
            return Inference()
        # [ymin, xmin, ymax, xmax] -> xyxy, normalised to the model input
        xyxy = boxes[keep][:, [1, 0, 3, 2]]
        framed = transform.to_frame(xyxy)
        dets = []
        for row, i in enumerate(keep.tolist()):
            cid = int(classes[i])
            dets.append(Detection(class_id=cid, label=self.name(cid),
                                  score=float(scores[i]),
                                  box=(float(framed[row, 0]), float(framed[row, 1]),
                                       float(framed[row, 2]), float(framed[row, 3]))))
        dets.sort(key=lambda d: -d.score)
        return Inference(detections=tuple(dets))

