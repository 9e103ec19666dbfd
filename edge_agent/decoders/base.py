"""The decoder protocol and the small pieces every decoder shares.

A decoder turns a model's raw output tensors into an :class:`~edge_agent.types.Inference`. It is
a pure numpy function of the output arrays and the tensors' quantisation parameters (taken
from the :class:`~edge_agent.types.ModelSignature`); it never sees an interpreter, so it
can be tested without TFLite installed.

Every decoder class is constructed as ``Cls(signature, labels, options, score_threshold)`` and
raises :class:`~edge_agent.errors.ModelError` when the model's outputs do not fit it, and
:class:`DecoderOptionsError` (a ConfigError, also a ValueError) when ``options`` (the config's
``decoder_options``) holds an unknown key or a bad value; its lines name the option key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edge_agent.errors import ConfigError, ModelError
from edge_agent.types import Inference, ModelSignature, TensorSpec, Transform


class DecoderOptionsError(ConfigError, ValueError):
    """A bad ``model.decoder_options`` entry; each problem line starts with the option key."""


@runtime_checkable
class Decoder(Protocol):
    """Raw output tensors -> detections, classes or values.

    Attributes:
        kind: the config name of the decoder (``ssd``, ``yolo``, ...).
        letterbox: whether the decoder wants letterboxed input (aspect kept, padded); the
            pipeline uses it when the config's ``model.letterbox`` is null.
    """

    kind: str
    letterbox: bool

    def decode(self, outputs: list[np.ndarray], transform: Transform) -> Inference:
        """Decode one inference.

        Args:
            outputs: the model's output arrays, in the order of ``signature.outputs``.
            transform: how the frame was mapped into the model input; boxes are mapped back
                through it to the original frame.

        Returns:
            The detections (boxes normalised xyxy on the original frame), classes or values.
        """
        ...


def describe_outputs(outputs: Sequence[TensorSpec]) -> str:
    """The outputs as ``[1,10,4] float32, [1,10] float32`` for error messages."""
    if not outputs:
        return "no outputs"
    return ", ".join(f"[{','.join(str(d) for d in t.shape)}] {t.dtype}" for t in outputs)


def _is_yolo_shape(shape: tuple[int, ...]) -> bool:
    if len(shape) != 2:
        return False
    a, b = shape
    rows, cols = (a, b) if a > b else (b, a)
    return cols >= 6 and rows >= 4 * cols


def guess_decoder(signature: ModelSignature) -> str | None:
    """The decoder that fits ``signature``'s outputs, or None when no rule matches."""
    outs = signature.outputs
    shapes = [squeeze_batch(t.shape) for t in outs]
    if len(outs) == 4 and sum(1 for s in shapes if len(s) == 2 and s[1] == 4) == 1 and \
            sum(1 for s in shapes if s == (1,)) == 1:
        return "ssd"
    if len(outs) == 1 and _is_yolo_shape(shapes[0]) and outs[0].dtype != "int64":
        return "yolo"
    if len(outs) == 2:
        a, b = shapes
        if len(a) == 2 and len(b) == 2 and a[0] == b[0] and a[0] > 1:
            reg, cls = (a, b) if b[1] == 1 else (b, a)
            if cls[1] == 1 and reg[1] >= 4 and reg[1] % 2 == 0:
                return "anchors"
    if len(outs) == 1 and len(shapes[0]) == 1 and shapes[0][0] >= 2 and \
            outs[0].dtype != "int64":
        return "classification"
    return None


def misfit(kind: str, expected: str, signature: ModelSignature) -> ModelError:
    """The ModelError a decoder raises when a model's outputs do not fit it.

    The message names what the decoder expects, what the model has, and the decoder that
    ``auto`` would pick for it, when there is one.
    """
    guess = guess_decoder(signature)
    got = describe_outputs(signature.outputs)
    # the right decoder with the wrong settings gets no hint: the expectation says what to change
    tail = "" if guess == kind or kind == "raw" else f" (try decoder: {guess or 'raw'})"
    return ModelError(f"decoder {kind!r} does not fit this model: expected {expected}; "
                      f"got {len(signature.outputs)} output(s) {got}{tail}")


def input_size(signature: ModelSignature) -> tuple[int, int]:
    """The first input's (width, height) for an NHWC image model, else (0, 0)."""
    if not signature.inputs:
        return 0, 0
    shape = signature.inputs[0].shape
    if len(shape) == 4:
        return int(shape[2]), int(shape[1])
    return 0, 0


def squeeze_batch(shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` without leading batch dimensions of size 1."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


class Options:
    """Typed access to ``decoder_options`` with errors that name the key.

    Every ``get_*`` call records the key as known; :meth:`finish` then refuses unknown keys, so
    a typo in the config is reported instead of silently ignored.
    """

    def __init__(self, kind: str, options: Mapping[str, Any] | None) -> None:
        """Wrap the options of decoder ``kind``."""
        self.kind = kind
        self._options = dict(options or {})
        self._known: set[str] = set()

    def _bad(self, key: str, what: str) -> DecoderOptionsError:
        return DecoderOptionsError(f"{key}: {what} (decoder {self.kind!r}), "
                                   f"got {self._options[key]!r}")

    def error(self, key: str, what: str) -> DecoderOptionsError:
        """A DecoderOptionsError for ``key`` (for checks the getters do not cover)."""
        self._known.add(key)
        return self._bad(key, what) if key in self._options else DecoderOptionsError(
            f"{key}: {what} (decoder {self.kind!r})")

    def default(self, key: str) -> Any:
        """The option's default as the config declares it (``config.DECODER_OPTIONS``), so
        the default is written once; raises KeyError for a key the decoder's class lacks."""
        from edge_agent.config import DECODER_OPTIONS

        return DECODER_OPTIONS[self.kind].model_fields[key].default

    def has(self, key: str) -> bool:
        """Whether ``key`` is set (and mark it known)."""
        self._known.add(key)
        return key in self._options

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as given, unchecked."""
        self._known.add(key)
        return self._options.get(key, default)

    def get_float(self, key: str, default: float, *, lo: float | None = None,
                  hi: float | None = None) -> float:
        """A number, optionally within ``[lo, hi]``."""
        self._known.add(key)
        if key not in self._options:
            return default
        value = self._options[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, "expected a number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self._bad(key, f"expected a number in [{lo}, {hi}]")
        return float(value)

    def get_int(self, key: str, default: int, *, lo: int | None = None) -> int:
        """An integer, optionally at least ``lo``."""
        self._known.add(key)
        if key not in self._options:
            return default
        value = self._options[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "expected an integer")
        if lo is not None and value < lo:
            raise self._bad(key, f"expected an integer >= {lo}")
        return int(value)

    def get_choice(self, key: str, default: Any, choices: Iterable[Any]) -> Any:
        """One of ``choices`` (compared as given; YAML gives true/false as bools)."""
        self._known.add(key)
        allowed = list(choices)
        value = self._options.get(key, default)
        # typed comparison: YAML's true must not match a choice of 1, nor 1 a choice of true
        if any(value == c and type(value) is type(c) for c in allowed):
            return value
        raise self._bad(key, "expected one of " + ", ".join(str(c) for c in allowed))

    def finish(self) -> None:
        """Raise ConfigError naming every option this decoder does not know."""
        unknown = sorted(set(self._options) - self._known)
        if unknown:
            raise DecoderOptionsError([
                f"{key}: unknown option for decoder {self.kind!r} "
                f"(expected one of: {', '.join(sorted(self._known)) or 'none'})"
                for key in unknown
            ])


def dequantize(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """``array`` as float32 by ``spec``'s own scale and zero point."""
    return spec.dequantize(np.asarray(array))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float32."""
    x = np.clip(np.asarray(x, dtype=np.float32), -80.0, 80.0)
    out: np.ndarray = np.float32(1.0) / (np.float32(1.0) + np.exp(-x))
    return out
