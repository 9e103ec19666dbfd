"""The on-device face detector that snapshot and live-view redaction use, wired from the
default BlazeFace model through the same bundle code as any pipeline's model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.config import AgentConfig, ModelConfig
from edge_agent.default_models import default_models_dir
from edge_agent.privacy.redact import TiledFaceFinder
from edge_agent.types import Box, Frame

logger = logging.getLogger(__name__)


FACE_MODEL = "face_detection_full_range_sparse.tflite"


def build_face_detector(cfg: AgentConfig,
                        force: bool = False) -> Callable[[np.ndarray], list[Box]] | None:
    """The on-device face detector for snapshot and live-view redaction, when one is needed.

    BlazeFace full range from the default models, on the same runtime. Returns None when no
    pipeline publishes images and the live view is off, or when the model is not there
    (snapshots and the view then fail closed). ``force``: build it anyway (the snapshot
    command).
    """
    images = cfg.view.enabled or any(p.privacy.publish_images for p in cfg.pipelines)
    if not force and (not images or not any(p.privacy.redact_faces for p in cfg.pipelines)):
        return None

    path = default_models_dir() / FACE_MODEL
    if not path.exists():
        logger.warning("face model %s is missing (run: edge-agent models fetch); snapshots "
                       "will not be published (fail closed)", path)
        return None

    bundle = load_bundle(ModelConfig(path=path, decoder="anchors", threads=1), 0.5)
    lock = threading.Lock()

    def detect(image: np.ndarray) -> list[Box]:
        with lock:  # one interpreter, used by one thread at a time
            frame = Frame(0, 0.0, image=image)
            inputs, transform = bundle.prepare(frame)
            outputs = bundle.runtime.infer(inputs)
            return [d.box for d in bundle.decode(outputs, transform).detections]

    return TiledFaceFinder(detect)
