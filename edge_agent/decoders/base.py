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

from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar, get_args, runtime_checkable

import numpy as np
from pydantic import ValidationError

from edge_agent.config import DecoderOptionsBase
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


OptionsT = TypeVar("OptionsT", bound=DecoderOptionsBase)


def typed_options(cls: type[OptionsT],
                  options: DecoderOptionsBase | Mapping[str, object] | None) -> OptionsT:
    """``options`` as decoder ``cls``'s validated options object.

    From a config, ``options`` already is one (the config validated it by ``decoder``) and is
    returned as it is; under ``decoder: auto`` (:class:`~edge_agent.config.AutoOptions`) or as
    a plain mapping (tests, the bench) it is validated here by the same class, so a range or
    default is written only in :mod:`edge_agent.config`.

    Raises:
        DecoderOptionsError: one line per bad key: unknown to this decoder, wrong type, out
            of range.
    """
    if isinstance(options, cls):
        return options
    kind = str(get_args(cls.model_fields["decoder"].annotation)[0])
    raw = (options.model_dump(exclude_unset=True, exclude={"decoder"})
           if isinstance(options, DecoderOptionsBase) else dict(options or {}))
    raw.pop("decoder", None)
    try:
        return cls.model_validate({**raw, "decoder": kind})
    except ValidationError as exc:
        known = ", ".join(sorted(set(cls.model_fields) - {"decoder"})) or "none"
        lines: dict[str, str] = {}
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "decoder_options"
            if key in lines:
                continue
            if err["type"] == "extra_forbidden":
                lines[key] = (f"{key}: unknown option for decoder {kind!r} "
                              f"(expected one of: {known})")
            else:
                lines[key] = option_error(kind, key, "expected " + _expected(cls, key),
                                          raw.get(key)).problems[0]
        raise DecoderOptionsError(list(lines.values())) from None


def option_error(kind: str, key: str, what: str, value: object = None) -> DecoderOptionsError:
    """A DecoderOptionsError for ``key`` (checks that need the model or the labels)."""
    got = "" if value is None else f", got {value!r}"
    return DecoderOptionsError(f"{key}: {what} (decoder {kind!r}){got}")


def _expected(cls: type[DecoderOptionsBase], key: str) -> str:
    """What option ``key`` takes, in words, from its JSON Schema (choices, type, range)."""
    schema = cls.model_json_schema()["properties"].get(key, {})
    choices: list[str] = []
    kinds: list[str] = []
    for alt in schema.get("anyOf", [schema]):
        kind = alt.get("type")
        if "const" in alt or "enum" in alt:
            choices += [str(v) for v in alt.get("enum", [alt.get("const")])]
        elif kind == "boolean":
            choices += ["True", "False"]
        elif kind in ("integer", "number"):
            kinds.append(("an integer" if kind == "integer" else "a number") + _range(alt))
        elif kind == "array":
            items = alt.get("items") or (alt.get("prefixItems") or [{}])[0]
            what = {"integer": "integers", "number": "numbers"}.get(items.get("type"), "values")
            size = alt.get("maxItems")
            kinds.append(f"a list of {what}{_range(items)}" if size is None or size != alt.get(
                "minItems") else f"a list of {size} {what}{_range(items)}")
        elif kind == "string":
            kinds.append("text")
    if choices:
        kinds.insert(0, "one of " + ", ".join(choices))
    return " or ".join(kinds) or "a valid value"


def _range(schema: Mapping[str, object]) -> str:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if schema.get("exclusiveMinimum") is not None:
        return f" > {schema['exclusiveMinimum']}"
    return ""


def dequantize(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """``array`` as float32 by ``spec``'s own scale and zero point."""
    return spec.dequantize(np.asarray(array))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float32."""
    x = np.clip(np.asarray(x, dtype=np.float32), -80.0, 80.0)
    out: np.ndarray = np.float32(1.0) / (np.float32(1.0) + np.exp(-x))
    return out
