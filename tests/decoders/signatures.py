"""Tensor specs and signatures for decoder tests with synthetic output arrays."""

from __future__ import annotations

import numpy as np

from edge_agent.runtime.base import ModelSignature, TensorSpec
from edge_agent.types import Transform


def spec(shape: tuple[int, ...], dtype: str = "float32", scale: float = 0.0, zp: int = 0,
         name: str = "out", index: int = 0) -> TensorSpec:
    """A TensorSpec with the given shape and quantisation."""
    return TensorSpec(name=name, index=index, shape=shape, dtype=dtype, scale=scale,
                      zero_point=zp)


def signature(*outputs: TensorSpec, input_shape: tuple[int, ...] = (1, 320, 320, 3),
              input_dtype: str = "float32") -> ModelSignature:
    """A signature with one image input and ``outputs``."""
    return ModelSignature(inputs=(spec(input_shape, input_dtype, name="input"),),
                          outputs=tuple(outputs))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def letterbox_transform(frame_w: int, frame_h: int, size: int) -> Transform:
    """The Transform of letterboxing a frame into a centred square of ``size``."""
    r = size / max(frame_w, frame_h)
    nw, nh = round(frame_w * r), round(frame_h * r)
    return Transform(scale_x=nw / size, scale_y=nh / size, pad_x=(size - nw) / 2 / size,
                     pad_y=(size - nh) / 2 / size)


def as_float(x: list[float] | np.ndarray) -> np.ndarray:
    """float32 array."""
    return np.asarray(x, dtype=np.float32)
