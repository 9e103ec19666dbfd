"""The face detector the agent is meant to build, assembled here from the real parts.

``runtime.load_runtime`` + ``runtime.preprocess.Preprocessor`` (letterbox, RGB, -1..1) +
``decoders.anchors.AnchorsDecoder`` (face_full preset), wrapped as ``detect(image) ->
list[Box]`` and tiled by :class:`edge_agent.privacy.redact.TiledFaceFinder`. Falls back to the
small local decode in :mod:`tests.privacy.blazeface` if those modules are not importable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.types import Box

Detect = Callable[[np.ndarray], list[Box]]


class FaceDetect:
    """BlazeFace full range on one full image (letterboxed), boxes normalised to it."""

    def __init__(self, model: Path, threshold: float = 0.5, threads: int = 2) -> None:
        from edge_agent.decoders.anchors import AnchorsDecoder
        from edge_agent.decoders.labels import load_labels
        from edge_agent.runtime.interpreter import load_runtime
        from edge_agent.runtime.preprocess import Preprocessor

        self.runtime = load_runtime(model, threads=threads)
        sig = self.runtime.signature
        self.decoder = AnchorsDecoder(sig, load_labels(None), {}, threshold)
        self.pre = Preprocessor(sig.inputs[0], letterbox=True, color="rgb", input_range="auto")
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[Box]:
        self.calls += 1
        arr, transform = self.pre(np.ascontiguousarray(image))
        inf = self.decoder.decode(self.runtime.infer([arr]), transform)
        return [d.box for d in inf.detections]

    def close(self) -> None:
        self.runtime.close()


def make_detector(model: Path, threshold: float = 0.5) -> Detect:
    """The real-parts detector, or the local test decode when they are missing."""
    try:
        return FaceDetect(model, threshold)
    except ImportError:
        from tests.privacy.blazeface import BlazeFaceFull

        return BlazeFaceFull(model, threshold)
