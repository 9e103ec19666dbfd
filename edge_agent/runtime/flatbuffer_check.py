"""A bounds check of a TFLite flatbuffer before any backend parses it.

LiteRT verifies a model file and refuses a damaged one with "not a valid Flatbuffer";
tflite-runtime 2.14 does not, and a truncated file crashes the whole process with SIGSEGV
inside ``Interpreter(...)`` (found by the tflite-runtime CI pass). This walks the parts of the
schema that an interpreter dereferences at load time (the model's tables and vectors, each
subgraph's tensors and operators, each buffer's bytes, including buffers stored after the
flatbuffer in models over 2 GB) and checks every offset against the file size, so a damaged
file becomes a :class:`~edge_agent.errors.ModelError` on every backend.

Field numbers follow tensorflow/lite/schema/schema.fbs (Model: 1 operator_codes, 2 subgraphs,
4 buffers; SubGraph: 0 tensors, 1 inputs, 2 outputs, 3 operators; Tensor: 0 shape, 2 buffer;
Operator: 0 opcode_index, 1 inputs, 2 outputs; Buffer: 0 data, 1 offset, 2 size).
"""

from __future__ import annotations

import struct

IDENTIFIER = b"TFL3"


class FlatbufferDamaged(ValueError):
    """The file is not a complete TFLite flatbuffer; the message says where it breaks."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def _need(self, pos: int, n: int, what: str) -> None:
        if pos < 0 or pos + n > self.size:
            raise FlatbufferDamaged(f"{what} at byte {pos} (+{n}) lies outside the "
                                    f"{self.size}-byte file")

    def u16(self, pos: int, what: str) -> int:
        self._need(pos, 2, what)
        return int(struct.unpack_from("<H", self.data, pos)[0])

    def u32(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return int(struct.unpack_from("<I", self.data, pos)[0])

    def i32(self, pos: int, what: str) -> int:
        self._need(pos, 4, what)
        return int(struct.unpack_from("<i", self.data, pos)[0])

    def u64(self, pos: int, what: str) -> int:
        self._need(pos, 8, what)
        return int(struct.unpack_from("<Q", self.data, pos)[0])

    def field(self, table: int, index: int, what: str) -> int | None:
        """The absolute position of field ``index`` of the table at ``table``, or None."""
        vtable = table - self.i32(table, f"{what} vtable offset")
        vt_size = self.u16(vtable, f"{what} vtable")
        self._need(vtable, vt_size, f"{what} vtable")
        slot = 4 + 2 * index
        if slot + 2 > vt_size:
            return None
        rel = self.u16(vtable + slot, f"{what} field {index}")
        return table + rel if rel else None

    def ref(self, table: int, index: int, what: str) -> int | None:
        """Follow an offset field (table, vector or string) to its target, or None."""
        pos = self.field(table, index, what)
        if pos is None:
            return None
        return pos + self.u32(pos, what)

    def vector(self, table: int, index: int, elem: int, what: str) -> tuple[int, int]:
        """(first element position, length) of a vector field; (0, 0) when absent."""
        start = self.ref(table, index, what)
        if start is None:
            return 0, 0
        n = self.u32(start, f"{what} length")
        self._need(start + 4, n * elem, what)
        return start + 4, n

    def tables(self, table: int, index: int, what: str) -> list[int]:
        """The positions of the tables in a vector-of-tables field."""
        first, n = self.vector(table, index, 4, what)
        return [first + 4 * i + self.u32(first + 4 * i, what) for i in range(n)]


def check_model_bytes(data: bytes) -> None:
    """Raise :class:`FlatbufferDamaged` unless ``data`` is a structurally complete TFLite model."""
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise FlatbufferDamaged(f"no {IDENTIFIER.decode()} identifier")
    r = _Reader(data)
    model = r.u32(0, "root table")
    r.field(model, 0, "model")
    buffers = r.tables(model, 4, "model.buffers")
    for i, buf in enumerate(buffers):
        r.vector(buf, 0, 1, f"buffers[{i}].data")
        off_pos, size_pos = r.field(buf, 1, "buffer"), r.field(buf, 2, "buffer")
        if off_pos is not None and size_pos is not None:
            off, size = r.u64(off_pos, "buffer offset"), r.u64(size_pos, "buffer size")
            if off > 1 and off + size > r.size:
                raise FlatbufferDamaged(f"buffers[{i}] ({size} bytes at {off}) lies outside "
                                        f"the {r.size}-byte file")
    n_codes = len(r.tables(model, 1, "model.operator_codes"))
    for s, sub in enumerate(r.tables(model, 2, "model.subgraphs")):
        for t, tensor in enumerate(r.tables(sub, 0, f"subgraphs[{s}].tensors")):
            r.vector(tensor, 0, 4, f"subgraphs[{s}].tensors[{t}].shape")
            pos = r.field(tensor, 2, "tensor")
            if pos is not None and r.u32(pos, "tensor buffer") >= max(len(buffers), 1):
                raise FlatbufferDamaged(f"subgraphs[{s}].tensors[{t}] names a missing buffer")
        r.vector(sub, 1, 4, f"subgraphs[{s}].inputs")
        r.vector(sub, 2, 4, f"subgraphs[{s}].outputs")
        for o, op in enumerate(r.tables(sub, 3, f"subgraphs[{s}].operators")):
            pos = r.field(op, 0, "operator")
            if pos is not None and r.u32(pos, "opcode index") >= n_codes:
                raise FlatbufferDamaged(f"subgraphs[{s}].operators[{o}] names a missing opcode")
            r.vector(op, 1, 4, f"subgraphs[{s}].operators[{o}].inputs")
            r.vector(op, 2, 4, f"subgraphs[{s}].operators[{o}].outputs")
