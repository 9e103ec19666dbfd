"""A loaded model with everything needed to feed it and read it: the unit a swap replaces.

This module is part of the wiring layer (like ``pipeline.py`` and ``agent.py``): it connects
the runtime, preprocessing and decoder stages, which never import each other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.config import ModelConfig, fixed_threads
from edge_agent.decoders.base import Decoder
from edge_agent.decoders.factory import create_decoder
from edge_agent.decoders.labels import Labels, load_labels
from edge_agent.digest import sha256_file
from edge_agent.errors import ModelError
from edge_agent.runtime.base import Runtime
from edge_agent.runtime.preprocess import Preprocessor, prepare_window
from edge_agent.runtime.targets import TargetRuntime, target_specs
from edge_agent.runtime.threads_auto import ThreadChoice, cpu_budget, pick_threads
from edge_agent.types import IDENTITY, Frame, Inference, ModelRef, Transform

logger = logging.getLogger(__name__)




@dataclass(frozen=True, eq=False)
class ModelBundle:
    """Runtime + preprocessing + decoder + labels + identity of one model.

    A bundle is used by one inference thread at a time; a model swap replaces the whole bundle
    between two frames.
    """

    runtime: Runtime
    preprocessor: Preprocessor | None
    decoder: Decoder
    labels: Labels
    ref: ModelRef
    path: Path
    labels_path: Path | None
    thread_choice: ThreadChoice | None = None  # ``threads: auto``: what was measured

    def prepare(self, frame: Frame) -> tuple[list[np.ndarray], Transform]:
        """Model inputs for ``frame`` and how to map boxes back to it."""
        spec = self.runtime.signature.inputs[0]
        if frame.image is not None and self.preprocessor is not None:
            arr, transform = self.preprocessor(frame.image)
        elif frame.data is not None:
            arr, transform = prepare_window(spec, frame.data), IDENTITY
        else:
            raise ModelError(f"model {self.ref.name} cannot take this frame "
                             f"(input {list(spec.shape)}, frame has no image and no data)")
        inputs = [arr]
        for extra in self.runtime.signature.inputs[1:]:
            inputs.append(np.zeros(extra.shape, dtype=extra.dtype))
        return inputs, transform

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Decoder output for one frame."""
        return self.decoder.decode(outputs, transform)

    def close(self) -> None:
        """Release the interpreter."""
        self.runtime.close()


def outputs_finite(outputs: list[np.ndarray]) -> bool:
    """Whether every float output is free of NaN and infinity."""
    for out in outputs:
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            return False
    return True


def load_bundle(
    model: ModelConfig,
    score_threshold: float,
    *,
    path: Path | None = None,
    labels_path: Path | None = None,
    version: int = 0,
    name: str | None = None,
    sha256: str | None = None,
    target_files: Mapping[str, Path] | None = None,
    busy_threads: int = 0,
    loaded: TargetRuntime | None = None,
) -> ModelBundle:
    """Load a model as configured (or ``path`` instead of ``model.path``, for updates) on the
    first of its execution targets that loads and passes a warm-up run.

    Raises:
        ModelError: the model does not load on any target, or does not fit the decoder.

    ``busy_threads``: interpreter threads other pipelines use (``threads: auto`` measures
    1..CPUs minus these).

    ``loaded``: a runtime already loaded for this model (the agent's start-up check loads the
    configured model); used when it is exactly what this call would load, else closed. Either
    way this call owns it.
    """
    model_path = Path(path or model.path)
    choice = None
    if model.threads == "auto":
        choice = pick_threads(model_path, budget=cpu_budget(busy_threads))
        logger.info("model %s: %s", model_path.name, choice.describe())
    threads = choice.threads if choice is not None else fixed_threads(model)
    lab_path = labels_path if labels_path is not None else model.labels
    specs = target_specs(model, path=path, target_files=target_files)
    if loaded is not None and choice is None and loaded.built_as(
            specs, threads=threads, invoke_timeout_s=model.invoke_timeout_s,
            load_timeout_s=model.load_timeout_s, reprobe_s=model.reprobe_s,
            reprobe_max_s=model.reprobe_max_s):
        runtime = loaded
    else:
        if loaded is not None:
            loaded.close()
        runtime = TargetRuntime(
            specs, threads=threads, invoke_timeout_s=model.invoke_timeout_s,
            load_timeout_s=model.load_timeout_s, reprobe_s=model.reprobe_s,
            reprobe_max_s=model.reprobe_max_s)
    try:
        labels = load_labels(lab_path)
        decoder = create_decoder(model.decoder, runtime.signature, labels,
                                 model.decoder_options, score_threshold)
        spec = runtime.signature.inputs[0]
        preprocessor = None
        if len(spec.shape) in (3, 4):  # images: [1,H,W,C] or [1,H,W]
            letterbox = model.letterbox if model.letterbox is not None else bool(
                getattr(decoder, "letterbox", False))
            try:
                # buffers: the frame being prepared, two queued, one in invoke, one spare
                preprocessor = Preprocessor(spec, letterbox=letterbox, color=model.color,
                                            input_range=model.input_range, buffers=5)
            except ModelError:
                if len(spec.shape) == 4:
                    raise
                preprocessor = None  # a [1,N,C] sensor input, fed by prepare_window
    except Exception:
        runtime.close()
        raise
    digest = sha256 or sha256_file(model_path)
    ref = ModelRef(name=name or model.name or model_path.stem, version=version, sha256=digest)
    logger.info("model %s v%d (%s) on %s %s, %d threads, delegate %s, decoder %s",
                ref.name, ref.version, digest[:12], runtime.info.backend,
                runtime.info.backend_version, runtime.info.threads,
                runtime.info.delegate or "none (CPU)", getattr(decoder, "kind", model.decoder))
    return ModelBundle(runtime, preprocessor, decoder, labels, ref, model_path, lab_path, choice)


def warm_up(bundle: ModelBundle, frame: Frame | None, max_latency_ms: float | None = None) -> float:
    """Run ``bundle`` once on ``frame`` (or a grey frame); return the latency in ms.

    Raises:
        ModelError: the outputs are not finite, the decoder fails, or the latency is too high.
    """
    if frame is None:
        spec = bundle.runtime.signature.inputs[0]
        if len(spec.shape) == 4:
            frame = Frame(0, 0.0, image=np.full((480, 640, 3), 114, np.uint8))
        else:
            n = int(np.prod(spec.shape[1:])) if len(spec.shape) > 1 else 1
            frame = Frame(0, 0.0, data=np.zeros((n, 1), np.float32))
    inputs, transform = bundle.prepare(frame)
    t0 = time.perf_counter()
    try:
        outputs = bundle.runtime.infer(inputs)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"warm-up run failed: {exc}") from None
    ms = (time.perf_counter() - t0) * 1000
    if not outputs_finite(outputs):
        raise ModelError("warm-up run gave non-finite outputs (NaN or infinity)")
    try:
        bundle.decode(outputs, transform)
    except (ValueError, IndexError, TypeError) as exc:
        raise ModelError(f"decoder failed on the warm-up output: {exc}") from None
    if max_latency_ms is not None and ms > max_latency_ms and not math.isclose(ms, max_latency_ms):
        raise ModelError(f"warm-up latency {ms:.1f} ms is above max_latency_ms {max_latency_ms}")
    return ms
