"""Raw outputs: the dequantised first output, flattened, as ``values``.

For regression and sensor models (``[1,1]``, ``[1,K]``) the values are published as they are.
Large outputs would make results of hundreds of kilobytes, so:

* an integer class map (an integer output without quantisation parameters and with a spatial
  shape: segmentation argmax, e.g. DeepLab's ``[1,513,513]`` int64) becomes a
  class histogram: ``values[i]`` is the fraction of pixels of class ``i`` (length: the larger of
  the label count and the highest class id + 1, capped at 256), and ``classes`` lists the
  classes present, largest share first, with the share as score;
* a float map with more than ``max_values`` (default 1024) elements and a spatial shape
  (``[1,H,W]`` or ``[1,H,W,C]``) is mean-pooled over blocks until it fits, channel by channel
  (selfie segmentation's 256x256 probability becomes 32x32);
* any other output larger than ``max_values`` is refused at load time (raise ``max_values``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edge_agent.config import RawOptions
from edge_agent.decoders.base import misfit, squeeze_batch, typed_options
from edge_agent.decoders.labels import Labels, Namer
from edge_agent.types import ClassScore, Inference, ModelSignature, Transform

MAX_HISTOGRAM_CLASSES = 256
INTEGER_DTYPES = frozenset({"int64", "int32", "int16", "uint16", "uint8", "int8"})


class RawDecoder:
    """The first output, dequantised and flattened (with the size limits above)."""

    kind = "raw"
    letterbox = False

    def __init__(self, signature: ModelSignature, labels: Labels,
                 options: RawOptions | Mapping[str, object] | None,
                 score_threshold: float) -> None:
        """Pick the mode (values, histogram or pooled map) from the first output.

        Raises:
            ModelError: the model has no output, or a non-spatial output above ``max_values``.
            ConfigError: an unknown or bad option.
        """
        self.max_values = typed_options(RawOptions, options).max_values
        if not signature.outputs:
            raise misfit(self.kind, "at least 1 output", signature)
        self.spec = signature.outputs[0]
        self.labels = labels
        self.name = Namer(labels)
        self.score_threshold = float(score_threshold)
        shape = squeeze_batch(self.spec.shape)
        size = math.prod(shape)
        self.mode = "values"
        self.pool = (1, 1)
        if self.spec.dtype in INTEGER_DTYPES and not self.spec.quantized and len(shape) >= 2:
            self.mode = "histogram"
            self.bins = min(MAX_HISTOGRAM_CLASSES, max(len(labels), 1))
        elif size > self.max_values:
            if len(shape) not in (2, 3):
                raise misfit(self.kind, f"an output of at most max_values={self.max_values} "
                             "values (raise decoder_options.max_values)", signature)
            h, w = shape[0], shape[1]
            c = shape[2] if len(shape) == 3 else 1
            f = 1
            while math.ceil(h / f) * math.ceil(w / f) * c > self.max_values and f < max(h, w):
                f *= 2
            self.mode = "pooled"
            self.pool = (f, f)
        self.shape = shape

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Values (or a histogram / pooled map) of the first output (``transform`` unused)."""
        arr = np.asarray(outputs[0])
        if self.mode == "histogram":
            flat = arr.reshape(-1)
            top = int(flat.max()) + 1 if flat.size else 1
            bins = max(self.bins, min(top, MAX_HISTOGRAM_CLASSES))
            counts = np.bincount(np.clip(flat, 0, bins - 1).astype(np.int64), minlength=bins)
            share = counts.astype(np.float64) / max(flat.size, 1)
            present = np.nonzero(share > 0)[0]
            present = present[np.argsort(-share[present], kind="stable")]
            classes = tuple(ClassScore(int(i), self.name(int(i)), float(share[i]))
                            for i in present.tolist())
            return Inference(classes=classes, values=tuple(float(v) for v in share))
        x = self.spec.dequantize(arr).reshape(self.shape)
        if self.mode == "pooled":
            x = _pool(x if x.ndim == 3 else x[..., None], self.pool[0])
        return Inference(values=tuple(x.reshape(-1).tolist()))


def _pool(x: np.ndarray, f: int) -> np.ndarray:
    """Mean-pool an (H, W, C) map by ``f`` in both axes (edges padded by repetition)."""
    h, w, c = x.shape
    ph, pw = -h % f, -w % f
    if ph or pw:
        x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="edge")
    hh, ww = x.shape[0] // f, x.shape[1] // f
    pooled: np.ndarray = x.reshape(hh, f, ww, f, c).mean(axis=(1, 3), dtype=np.float64)
    return pooled.astype(np.float32)
