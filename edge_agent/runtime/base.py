"""The runtime protocol and the tensor descriptions decoders and preprocessing work from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output tensor of a model.

    Attributes:
        name: the tensor name (exporters name them differently: never rely on it).
        index: the interpreter's tensor index.
        shape: the static shape, e.g. (1, 300, 300, 3).
        dtype: numpy dtype name: "uint8", "int8", "float32", "int64", ...
        scale: quantisation scale (per-tensor; the first channel's for per-channel);
            0.0 when the tensor is not quantised.
        zero_point: quantisation zero point.
    """

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        """Whether values are stored as integers with a scale and zero point."""
        return self.scale != 0.0 and self.dtype in {"uint8", "int8", "int16", "int32"}

    def dequantize(self, array: np.ndarray) -> np.ndarray:
        """``array`` as float32 real values, by this tensor's own scale and zero point."""
        if self.quantized:
            shifted = array.astype(np.float32) - np.float32(self.zero_point)
            real: np.ndarray = shifted * np.float32(self.scale)
            return real
        return array.astype(np.float32, copy=False)


@dataclass(frozen=True, slots=True)
class ModelSignature:
    """The inputs and outputs of a loaded model."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


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
    info: RuntimeInfo
    path: Path

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on ``inputs`` (one array per input tensor) and return copies of outputs."""
        ...

    def close(self) -> None:
        """Release the interpreter and its delegate."""
        ...
