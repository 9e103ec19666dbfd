"""The runtime protocol. The tensor descriptions (TensorSpec, ModelSignature) live in
:mod:`edge_agent.types`, so decoders and preprocessing need not import the runtime stage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_agent.types import ModelSignature, TensorSpec

__all__ = ["ModelSignature", "Runtime", "RuntimeInfo", "TensorSpec"]


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What actually runs a model, for logs, status and doctor."""

    backend: str  # "ai_edge_litert", "tflite_runtime" or "tensorflow"
    backend_version: str
    delegate: str | None  # the delegate in use, None on the CPU (XNNPACK)
    threads: int
    fallback_reason: str | None = None  # why a configured delegate is not in use


class Runtime(Protocol):
    """A loaded model, used by one thread at a time."""

    signature: ModelSignature

    @property
    def info(self) -> RuntimeInfo:
        """What runs the model now (a runtime with targets changes it on failover)."""
        ...

    @property
    def path(self) -> Path:
        """The model file serving now."""
        ...

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``inputs`` (one array per input tensor) and return copies of outputs."""
        ...

    def close(self) -> None:
        """Release the interpreter and its delegate."""
        ...
