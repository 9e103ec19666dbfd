"""Image (or sensor) classifiers: one output of K class scores -> the top-k classes.

The output is dequantised with its own scale and zero point. Scores are passed through softmax
only when they look like logits (``softmax: auto``: some value below 0 or above 1), or when
``softmax: true``. A background class (ImageNet models with 1001 outputs: index 0) is never
reported: ``background: auto`` treats index 0 as background when K is 1001 or the label file's
first line is ``background``; ``true``/``false`` force it. Classes below the pipeline's
``score_threshold`` are dropped; the rest come best first, at most ``top_k`` (default 5).

Label alignment: a label file with one more line than K whose first line is a background line
is shifted by one; ``label_offset`` overrides.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_agent.config import ClassificationOptions
from edge_agent.decoders.base import misfit, squeeze_batch, typed_options
from edge_agent.decoders.labels import Labels, Namer
from edge_agent.types import ClassScore, Inference, ModelSignature, Transform

EXPECTED = "1 output of class scores [1,K] with K >= 2"


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    out: np.ndarray = (e / np.sum(e, axis=-1, keepdims=True)).astype(np.float32)
    return out


class ClassificationDecoder:
    """Top-k classes of a single score vector."""

    kind = "classification"
    letterbox = False

    def __init__(self, signature: ModelSignature, labels: Labels,
                 options: ClassificationOptions | Mapping[str, object] | None,
                 score_threshold: float) -> None:
        """Check for one [1,K] output and resolve options.

        Raises:
            ModelError: the model does not have exactly one score vector output.
            ConfigError: an unknown or bad option.
        """
        opts = typed_options(ClassificationOptions, options)
        self.top_k = opts.top_k
        background = opts.background
        self.softmax = opts.softmax
        offset = opts.label_offset
        outs = signature.outputs
        if len(outs) != 1 or outs[0].dtype == "int64":
            raise misfit(self.kind, EXPECTED, signature)
        shape = squeeze_batch(outs[0].shape)
        if len(shape) != 1 or shape[0] < 2:
            raise misfit(self.kind, EXPECTED, signature)
        self.spec = outs[0]
        self.num_classes = shape[0]
        self.labels = labels.fit(self.num_classes, offset=offset)
        self.name = Namer(self.labels)
        if background == "auto":
            background = self.num_classes == 1001 or (
                len(self.labels) == self.num_classes and self.labels.has_background)
        self.background = bool(background)
        self.score_threshold = float(score_threshold)

    def scores(self, output: np.ndarray) -> np.ndarray:
        """The (K,) class probabilities of one output array."""
        x = self.spec.dequantize(np.asarray(output)).reshape(-1)
        use_softmax = self.softmax is True or (
            self.softmax == "auto" and (float(x.min()) < -1e-3 or float(x.max()) > 1.0 + 1e-3))
        return softmax(x) if use_softmax else x

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """The best classes at or above the threshold, best first (``transform`` unused)."""
        p = self.scores(outputs[0])
        if self.background:
            p = p.copy()
            p[0] = -np.inf
        k = min(self.top_k, len(p))
        top = np.argpartition(-p, k - 1)[:k]
        top = top[np.argsort(-p[top], kind="stable")]
        classes = tuple(
            ClassScore(class_id=int(i), label=self.name(int(i)), score=float(p[i]))
            for i in top.tolist() if p[i] >= self.score_threshold
        )
        return Inference(classes=classes)
