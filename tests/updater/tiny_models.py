"""Tiny TFLite models built here with the flatbuffer schema (no TensorFlow needed)."""

from __future__ import annotations

from pathlib import Path

import flatbuffers
from ai_edge_litert import schema_py_generated as schema


def _tensor(name: str, shape: list[int], buffer: int) -> schema.TensorT:
    t = schema.TensorT()
    t.name = name.encode()
    t.shape = shape
    t.type = schema.TensorType.FLOAT32
    t.buffer = buffer
    return t


def _op(code_index: int, inputs: list[int], outputs: list[int]) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex = code_index
    op.inputs = inputs
    op.outputs = outputs
    return op


def write_nan_model(path: Path) -> Path:
    """A float model [1,4] -> [1,4] whose every output is NaN: (x - x) / (x - x)."""
    codes = []
    for builtin in (schema.BuiltinOperator.SUB, schema.BuiltinOperator.DIV):
        c = schema.OperatorCodeT()
        c.builtinCode = builtin
        c.deprecatedBuiltinCode = builtin
        c.version = 1
        codes.append(c)
    sub = schema.SubGraphT()
    sub.tensors = [_tensor("input", [1, 4], 1), _tensor("zero", [1, 4], 2),
                   _tensor("output", [1, 4], 3)]
    sub.inputs = [0]
    sub.outputs = [2]
    sub.operators = [_op(0, [0, 0], [1]), _op(1, [1, 1], [2])]
    sub.name = b"main"
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = codes
    model.subgraphs = [sub]
    model.buffers = [schema.BufferT() for _ in range(4)]
    model.description = b"edge-agent test: NaN outputs"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path
