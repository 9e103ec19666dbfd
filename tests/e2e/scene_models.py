"""Real models, changed with the TFLite flatbuffer schema, that fail only on some scenes.

A model that is broken for every input is caught by the updater's warm-up. The watch after a
swap exists for the other kind: a model that works on the frame it was warmed up on and fails
on what the camera sees later. :func:`write_dark_nan_model` makes one from a real detector: it
keeps the detector's outputs and adds ``0 * sqrt(mean(input) - threshold)`` to its score
output, which is zero for a bright scene and NaN for a dark one (sqrt of a negative number).
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema


def _code(model: schema.ModelT, builtin: int) -> int:
    """The index of ``builtin`` in the model's operator codes (added when missing)."""
    for i, c in enumerate(model.operatorCodes):
        if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin:
            return i
    c = schema.OperatorCodeT()
    c.builtinCode = builtin
    c.deprecatedBuiltinCode = min(builtin, 127)
    c.version = 1
    model.operatorCodes.append(c)
    return len(model.operatorCodes) - 1


def _const(model: schema.ModelT, sub: schema.SubGraphT, name: str, value: np.ndarray,
           ttype: int) -> int:
    buf = schema.BufferT()
    buf.data = np.frombuffer(value.tobytes(), np.uint8).copy()
    model.buffers.append(buf)
    return _tensor(sub, name, list(value.shape), ttype, len(model.buffers) - 1)


def _tensor(sub: schema.SubGraphT, name: str, shape: list[int], ttype: int,
            buffer: int = 0) -> int:
    t = schema.TensorT()
    t.name = name.encode()
    t.shape = np.array(shape, np.int32)
    t.type = ttype
    t.buffer = buffer
    sub.tensors.append(t)
    return len(sub.tensors) - 1


def _op(sub: schema.SubGraphT, code: int, inputs: list[int], outputs: list[int],
        options_type: int = 0, options: object = None) -> None:
    op = schema.OperatorT()
    op.opcodeIndex = code
    op.inputs = inputs
    op.outputs = outputs
    op.builtinOptionsType = options_type
    op.builtinOptions = options
    sub.operators.append(op)


def write_dark_nan_model(src: Path, dst: Path, *, score_output: str = "classificators",
                         threshold: float = 0.0) -> Path:
    """Copy the float detector ``src`` to ``dst`` with a score output that is NaN on dark scenes.

    Args:
        src: a float-input TFLite model (e.g. BlazeFace, input in [-1, 1]).
        dst: where to write the changed model.
        score_output: the name of the output to change (its shape and name are kept).
        threshold: the mean normalised input below which the output turns NaN.

    Returns:
        ``dst``.
    """
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(src.read_bytes(), 0))
    sub = model.subgraphs[0]
    f32, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT32
    out_pos = next(i for i, t in enumerate(sub.outputs)
                   if sub.tensors[t].name.decode() == score_output)
    scores = sub.outputs[out_pos]
    shape = [int(x) for x in sub.tensors[scores].shape]
    sub.tensors[scores].name = (score_output + "_raw").encode()
    image = sub.inputs[0]
    rank = len(sub.tensors[image].shape)

    axes = _const(model, sub, "scene_axes", np.arange(1, rank, dtype=np.int32), i32)
    neg = _const(model, sub, "scene_threshold", np.array([-threshold], np.float32), f32)
    zero = _const(model, sub, "scene_zero", np.array([0.0], np.float32), f32)
    mean = _tensor(sub, "scene_mean", [1], f32)
    shifted = _tensor(sub, "scene_shifted", [1], f32)
    root = _tensor(sub, "scene_sqrt", [1], f32)
    gate = _tensor(sub, "scene_gate", [1], f32)
    out = _tensor(sub, score_output, shape, f32)

    reducer = schema.ReducerOptionsT()
    reducer.keepDims = False
    _op(sub, _code(model, schema.BuiltinOperator.MEAN), [image, axes], [mean],
        schema.BuiltinOptions.ReducerOptions, reducer)
    _op(sub, _code(model, schema.BuiltinOperator.ADD), [mean, neg], [shifted],
        schema.BuiltinOptions.AddOptions, schema.AddOptionsT())
    _op(sub, _code(model, schema.BuiltinOperator.SQRT), [shifted], [root])
    _op(sub, _code(model, schema.BuiltinOperator.MUL), [root, zero], [gate],
        schema.BuiltinOptions.MulOptions, schema.MulOptionsT())
    _op(sub, _code(model, schema.BuiltinOperator.ADD), [scores, gate], [out],
        schema.BuiltinOptions.AddOptions, schema.AddOptionsT())
    outputs = [int(t) for t in sub.outputs]
    outputs[out_pos] = out
    sub.outputs = outputs
    model.signatureDefs = None  # they name tensor indices of the original graph
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst
