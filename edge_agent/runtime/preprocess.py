"""Frame -> model input: resize or letterbox, colour order, and the input tensor's value mapping.

Everything is derived from the input tensor's own shape, dtype, scale and zero point (a
:class:`TensorSpec`), never from the model's name. Pixel values are mapped through one
256-entry lookup table built once per model:

* float inputs: pixel ``p`` to ``input_range`` ("auto" and "-1..1": ``(p - 127.5) / 127.5``,
  "0..1": ``p / 255``, "0..255": ``p``);
* quantised uint8/int8 inputs: the real range the quantisation can represent,
  ``[(qmin - zp) * scale, (qmax - zp) * scale]``, names the normalisation the model was trained
  with (-1..1, 0..1 or 0..255, whichever overlaps best). When that range is the quantised
  range itself (the usual case) the pixel codes map one to one onto the quantised codes: raw
  pixels for uint8 (COCO SSD: scale 1/128, zp 128; YOLOv5: 1/255, 0) and ``pixel - 128`` for
  int8 (scale ~1/255, zp -128). Otherwise ``q = round(r / scale + zp)``, clipped;
* integer inputs without quantisation parameters (MoveNet): raw pixels (int8: ``p - 128``).

Buffers are allocated once (per frame size); per frame only OpenCV writes into them.
"""

from __future__ import annotations

import logging
from typing import Literal

import cv2
import numpy as np

from edge_agent.errors import ModelError
from edge_agent.runtime.base import TensorSpec
from edge_agent.types import IDENTITY, Transform

logger = logging.getLogger(__name__)

PAD_VALUE = 114  # the grey letterbox padding YOLO and most exporters train with
InputRange = Literal["auto", "-1..1", "0..1", "0..255"]
_RANGES: dict[str, tuple[float, float]] = {"-1..1": (-1.0, 1.0), "0..1": (0.0, 1.0),
                                           "0..255": (0.0, 255.0)}
_INTERPOLATION = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                  "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}
_CV_LUT_DTYPES = {"uint8", "int8", "float32", "float64", "int16", "int32", "uint16"}


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two intervals."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _pixel_values(lo: float, hi: float) -> np.ndarray:
    """The real value of every pixel code 0..255 mapped linearly onto ``lo..hi``."""
    return lo + np.arange(256, dtype=np.float64) * ((hi - lo) / 255.0)


def value_table(spec: TensorSpec, input_range: str = "auto") -> tuple[np.ndarray, str]:
    """The lookup table pixel code -> input value, in the tensor's dtype, and what it does.

    Args:
        spec: the input tensor.
        input_range: "auto" (float: -1..1; quantised: derived from scale and zero point), or an
            explicit range that overrides the derivation (also for quantised inputs, for
            models whose quantisation does not tell).

    Returns:
        ``(table of 256 values, description)``; the description goes to logs and inspect.

    Raises:
        ModelError: the input dtype cannot hold an image.
    """
    dtype = np.dtype(spec.dtype)
    if input_range != "auto" and input_range not in _RANGES:
        raise ModelError(f"input_range {input_range!r}: expected auto, -1..1, 0..1 or 0..255")
    if dtype.kind == "f":
        rng = _RANGES["-1..1" if input_range == "auto" else input_range]
        return _pixel_values(*rng).astype(dtype), f"float {rng[0]:g}..{rng[1]:g}"
    if dtype.kind not in "iu":
        raise ModelError(f"input tensor {spec.name!r} has dtype {spec.dtype}, not an image type")
    info = np.iinfo(dtype)
    if not spec.quantized:
        # no quantisation parameters: the model takes pixel codes (shifted for signed types)
        shift = 0 if info.min >= 0 else -128
        return (np.arange(256) + shift).astype(dtype), f"raw pixels{' - 128' if shift else ''}"
    lo = (info.min - spec.zero_point) * spec.scale
    hi = (info.max - spec.zero_point) * spec.scale
    if input_range == "auto":
        name, best = max(((n, _overlap((lo, hi), r)) for n, r in _RANGES.items()),
                         key=lambda item: item[1])
        if best < 0.5:
            logger.warning("input %r: quantisation range %.3g..%.3g matches no usual "
                           "normalisation; mapping pixels onto it linearly", spec.name, lo, hi)
            rng = (lo, hi)
        else:
            rng = _RANGES[name]
    else:
        rng = _RANGES[input_range]
    one_lsb = spec.scale * 1.01
    if abs(rng[0] - lo) <= 2 * one_lsb and abs(rng[1] - hi) <= 2 * one_lsb and \
            info.max - info.min == 255:
        # the pixel codes are the quantised codes: no rounding, no loss
        table = (np.arange(256) + info.min).astype(dtype)
        return table, "raw pixels" if info.min == 0 else "pixels - 128"
    real = _pixel_values(*rng)
    q = np.clip(np.rint(real / spec.scale + spec.zero_point), info.min, info.max)
    return q.astype(dtype), f"q = round(r / {spec.scale:.6g} + {spec.zero_point}), " \
        f"r in {rng[0]:g}..{rng[1]:g}"


class Preprocessor:
    """Turns a BGR uint8 frame into the model's input tensor, into preallocated buffers.

    The returned array is one of ``buffers`` output buffers used in turn: it stays valid until
    ``buffers`` further calls (or pass ``out=`` to write elsewhere, e.g. straight into an
    interpreter's input tensor).

    Attributes:
        spec: the input tensor.
        height, width, channels: the model input geometry.
        letterbox: keep the aspect ratio and pad with grey (114).
        mapping: how pixel values are turned into input values (for logs and doctor).
    """

    def __init__(self, spec: TensorSpec, *, letterbox: bool = False,
                 color: Literal["rgb", "bgr"] = "rgb", input_range: str = "auto",
                 interpolation: str = "linear", buffers: int = 2) -> None:
        """Plan the preprocessing for ``spec``.

        Args:
            spec: the model's image input tensor: (1, H, W, C) with C 1 or 3, or (1, H, W).
            letterbox: keep the aspect ratio and pad (the decoder's ``letterbox`` attribute).
            color: channel order the model wants; frames are BGR.
            input_range: see :func:`value_table`.
            interpolation: "linear" (default; measured about 8x faster than "area" for a
                640x480 -> 300x300 shrink) or "area" (anti-aliased, better for big shrinks).
            buffers: how many output buffers to rotate through (>= 1).

        Raises:
            ModelError: the tensor is not an image input.
        """
        shape = spec.shape
        if len(shape) == 4 and shape[0] == 1 and shape[3] in (1, 3):
            self.height, self.width, self.channels = shape[1], shape[2], shape[3]
        elif len(shape) == 3 and shape[0] == 1:
            self.height, self.width, self.channels = shape[1], shape[2], 1
        else:
            raise ModelError(f"input {spec.name!r} {list(shape)} is not an image input "
                             "(expected [1,H,W,3], [1,H,W,1] or [1,H,W])")
        if color not in ("rgb", "bgr"):
            raise ModelError(f"color {color!r}: expected rgb or bgr")
        if interpolation not in _INTERPOLATION:
            raise ModelError(f"interpolation {interpolation!r}: expected one of "
                             f"{', '.join(_INTERPOLATION)}")
        self.spec = spec
        self.letterbox = letterbox
        self.color = color
        self._interp = _INTERPOLATION[interpolation]
        self._dtype = np.dtype(spec.dtype)
        table, self.mapping = value_table(spec, input_range)
        self._identity = self._dtype == np.uint8 and bool(np.array_equal(table, np.arange(256)))
        self._lut = table.reshape(1, 256)
        self._cv_lut = self._dtype.name in _CV_LUT_DTYPES
        hw = (self.height, self.width)
        self._canvas = np.full((*hw, 3), PAD_VALUE, np.uint8)  # BGR, model size
        self._colored = np.empty((*hw, 3) if self.channels == 3 else hw, np.uint8)
        self._outs = [np.empty(shape, self._dtype) for _ in range(max(1, buffers))]
        self._next = 0
        self._frame_hw: tuple[int, int] | None = None
        self._roi: tuple[int, int, int, int] = (0, 0, self.width, self.height)
        self._transform = IDENTITY

    def _plan(self, h: int, w: int) -> None:
        """Geometry for frames of ``h`` x ``w``: the resized image's place and the Transform."""
        self._frame_hw = (h, w)
        if not self.letterbox:
            self._roi = (0, 0, self.width, self.height)
            self._transform = IDENTITY
            return
        s = min(self.width / w, self.height / h)
        nw = max(1, min(self.width, round(w * s)))
        nh = max(1, min(self.height, round(h * s)))
        px, py = (self.width - nw) // 2, (self.height - nh) // 2
        self._canvas[:] = PAD_VALUE
        self._roi = (px, py, nw, nh)
        self._transform = Transform(scale_x=nw / self.width, scale_y=nh / self.height,
                                    pad_x=px / self.width, pad_y=py / self.height)

    @property
    def transform(self) -> Transform:
        """The Transform of the last frame size seen (identity before the first frame)."""
        return self._transform

    def __call__(self, image: np.ndarray, out: np.ndarray | None = None
                 ) -> tuple[np.ndarray, Transform]:
        """Preprocess one frame.

        Args:
            image: (H, W, 3) BGR uint8 (also accepted: (H, W) grey, (H, W, 4) BGRA).
            out: optional destination with the input's shape and dtype.

        Returns:
            ``(input array (1, H, W, C) in the tensor's dtype, Transform back to the frame)``.
        """
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        h, w = image.shape[:2]
        if self._frame_hw != (h, w):
            self._plan(h, w)
        px, py, nw, nh = self._roi
        if (nw, nh) == (w, h) and not self.letterbox:
            bgr = image  # already the model's size
        else:
            cv2.resize(image, (nw, nh), dst=self._canvas[py:py + nh, px:px + nw],
                       interpolation=self._interp)
            bgr = self._canvas
        if out is None:
            out = self._outs[self._next]
            self._next = (self._next + 1) % len(self._outs)
        # (H, W, C) or (H, W) view of the (1, H, W, C) / (1, H, W) destination
        dst = out[0] if self.channels == 3 or out.ndim == 3 else out[0, :, :, 0]
        if self.channels == 1:
            cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY, dst=self._colored)
            src = self._colored
        elif self.color == "rgb":
            if self._identity:
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=dst)
                return out, self._transform
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=self._colored)
            src = self._colored
        else:
            src = bgr
        if self._identity:
            np.copyto(dst, src)
        elif self._cv_lut:
            cv2.LUT(src, self._lut, dst=dst)
        else:
            np.take(self._lut[0], src, out=dst)
        return out, self._transform


def prepare_window(spec: TensorSpec, data: np.ndarray) -> np.ndarray:
    """A sensor window (N, C) float32 as the model's input tensor.

    Inputs [1, N], [1, N, C] or [1, C] (any shape with as many elements as the window) are
    filled in row-major order: sample by sample, channels inside. Quantised inputs get
    ``q = round(x / scale + zero_point)`` clipped to the dtype's range.

    Raises:
        ModelError: the window does not have as many values as the input tensor.
    """
    size = int(np.prod(spec.shape))
    if data.size != size:
        shape = "x".join(str(d) for d in data.shape)
        raise ModelError(f"a sensor window of {shape} values does not fill input "
                         f"{spec.name!r} {list(spec.shape)} ({size} values): set the source's "
                         "window and channels so that window x channels = the input size")
    dtype = np.dtype(spec.dtype)
    flat = np.asarray(data, dtype=np.float32).reshape(spec.shape)
    if dtype.kind == "f":
        return flat.astype(dtype)
    info = np.iinfo(dtype)
    if spec.quantized:
        flat = np.rint(flat / np.float32(spec.scale) + np.float32(spec.zero_point))
    return np.clip(flat, info.min, info.max).astype(dtype)
