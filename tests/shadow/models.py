"""A real detector with its class output permuted, made with the TFLite flatbuffer schema.

The copy finds the same boxes with the same scores as the original, but every class id ``c``
becomes ``n - 1 - c``: a candidate that looks healthy (finite outputs, same speed) and agrees
with the active model on nothing, which only a comparison of the two on real frames exposes.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tests.e2e.scene_models import _code, _const, _op, _tensor


def write_permuted_classes_model(src: Path, dst: Path, n_classes: int,
                                 class_output: int = 1) -> Path:
    """Copy the SSD ``src`` to ``dst`` with output ``class_output`` (the class ids) reversed
    over ``n_classes`` classes."""
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(src.read_bytes(), 0))
    sub = model.subgraphs[0]
    f32 = schema.TensorType.FLOAT32
    classes = sub.outputs[class_output]
    name = sub.tensors[classes].name.decode()
    sub.tensors[classes].name = (name + "_raw").encode()
    top = _const(model, sub, "permute_top", np.array([n_classes - 1], np.float32), f32)
    out = _tensor(sub, name, [int(x) for x in sub.tensors[classes].shape], f32)
    _op(sub, _code(model, schema.BuiltinOperator.SUB), [top, classes], [out],
        schema.BuiltinOptions.SubOptions, schema.SubOptionsT())
    outputs = [int(t) for t in sub.outputs]
    outputs[class_output] = out
    sub.outputs = outputs
    model.signatureDefs = None
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))
    return dst
