"""``edge-agent model inspect FILE``: signature, quantisation, ops, size and sha256 of a model.

The file is read twice: by the TFLite runtime (does it load here, and the exact tensor
specs), and as a flatbuffer through the TFLite schema (operators, including custom ones, and
the types of weights and activations), so a model that does not load (an unresolved custom
op) is still described, with the reason it does not load.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from edge_agent.errors import ModelError
from edge_agent.runtime.base import TensorSpec
from edge_agent.runtime.interpreter import load_runtime, schema_module
from edge_agent.runtime.preprocess import value_table

_IDENTIFIER = b"TFL3"


def _enum_names(cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _tensor_dict(spec: TensorSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype,
                           "scale": spec.scale, "zero_point": spec.zero_point}
    return out


def _read_schema(data: bytes) -> dict[str, Any] | None:
    """Ops, tensor types and metadata from the flatbuffer itself; None without the schema."""
    schema = schema_module()
    if schema is None:
        return None
    op_names = _enum_names(schema.BuiltinOperator)
    type_names = {k: v.lower() for k, v in _enum_names(schema.TensorType).items()}
    model = schema.Model.GetRootAs(data, 0)
    codes: list[str] = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if op_names.get(builtin) == "CUSTOM":
            custom = code.CustomCode()
            codes.append(f"CUSTOM:{custom.decode(errors='replace') if custom else '?'}")
        else:
            codes.append(op_names.get(builtin, f"BUILTIN_{builtin}"))
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    activations: Counter[str] = Counter()
    quantized_tensors = 0
    for g in range(model.SubgraphsLength()):
        sg = model.Subgraphs(g)
        for o in range(sg.OperatorsLength()):
            ops[codes[sg.Operators(o).OpcodeIndex()]] += 1
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            kind = type_names.get(tensor.Type(), str(tensor.Type()))
            buf = model.Buffers(tensor.Buffer()) if tensor.Buffer() < model.BuffersLength() \
                else None
            is_const = buf is not None and (buf.DataLength() > 0 or buf.Size() > 0)
            (weights if is_const else activations)[kind] += 1
            q = tensor.Quantization()
            if q is not None and q.ScaleLength() > 0:
                quantized_tensors += 1
    description = model.Description()
    metadata = [model.Metadata(i).Name().decode(errors="replace")
                for i in range(model.MetadataLength()) if model.Metadata(i).Name()]
    return {
        "schema_version": int(model.Version()),
        "description": description.decode(errors="replace") if description else "",
        "subgraphs": int(model.SubgraphsLength()),
        "metadata": metadata,
        "ops": dict(ops.most_common()),
        "custom_ops": sorted(c.split(":", 1)[1] for c in set(codes) if c.startswith("CUSTOM:")),
        "weights": dict(weights.most_common()),
        "activations": dict(activations.most_common()),
        "quantized_tensors": quantized_tensors,
    }


def _quant_kind(inputs: list[dict[str, Any]], fb: dict[str, Any] | None) -> str:
    """A one-phrase summary: full integer, dynamic range, float16 weights, or float."""
    int_types = {"int8", "uint8", "int16"}
    io_int = any(t["dtype"] in int_types for t in inputs)
    if fb is None:
        return "integer inputs" if io_int else "float inputs"
    weights, acts, ops = fb["weights"], fb["activations"], fb["ops"]
    int_acts = sum(n for k, n in acts.items() if k in int_types)
    float_acts = acts.get("float32", 0)
    if int_acts and int_acts >= float_acts:
        return "full integer (int8/uint8 activations)"
    if weights.get("float16") and "DEQUANTIZE" in ops:
        return "float16 weights, float32 inference"
    if weights.get("int8") or weights.get("uint8"):
        return "dynamic range (int8 weights, float activations)"
    return "float32"


def describe_model(path: str | Path) -> dict[str, Any]:
    """Everything ``model inspect`` shows, as a JSON-able dict.

    Keys: path, size, sha256, loads, load_error, backend, inputs, outputs (name, shape,
    dtype, scale, zero_point), input_mapping (how image pixels are fed), quantization, and,
    when the TFLite schema is available, ops (name -> count), custom_ops, weights and
    activations (dtype -> tensor count), schema_version, description, subgraphs, metadata.

    Raises:
        ModelError: the file is missing, empty, or not a TFLite flatbuffer.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {p}: {exc.strerror or exc}") from None
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise ModelError(f"{p} is not a TFLite model (no {_IDENTIFIER.decode()} identifier; "
                         f"{len(data)} bytes)")
    info: dict[str, Any] = {"path": str(p), "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()}
    load_error: str | None = None
    runtime = None
    try:
        runtime = load_runtime(p, threads=1)
    except ModelError as exc:
        load_error = str(exc)
        if "not a valid Flatbuffer" in load_error:
            raise ModelError(f"{p} is corrupt or truncated: {load_error.rsplit(': ', 1)[-1]}"
                             ) from None
    try:
        fb = _read_schema(data)
    except (IndexError, ValueError, TypeError, struct.error) as exc:  # a damaged flatbuffer
        raise ModelError(f"{p} is corrupt: cannot parse its flatbuffer ({exc})") from None
    info["loads"] = runtime is not None
    info["load_error"] = load_error
    if runtime is not None:
        info["backend"] = f"{runtime.info.backend} {runtime.info.backend_version}"
        info["inputs"] = [_tensor_dict(t) for t in runtime.signature.inputs]
        info["outputs"] = [_tensor_dict(t) for t in runtime.signature.outputs]
        mapping = []
        for t in runtime.signature.inputs:
            try:
                mapping.append(value_table(t)[1] if len(t.shape) in (3, 4) else "sensor values")
            except ModelError:
                mapping.append("n/a")
        info["input_mapping"] = mapping
        if fb is None:
            info["ops"] = dict(Counter(runtime.ops()).most_common())
        runtime.close()
    else:
        info["backend"] = None
        info["inputs"], info["outputs"], info["input_mapping"] = [], [], []
    if fb is not None:
        info.update(fb)
    info["quantization"] = _quant_kind(info["inputs"], fb)
    return info


def _fmt_tensor(t: dict[str, Any]) -> str:
    quant = f"  scale {t['scale']:.6g} zp {t['zero_point']}" if t["scale"] else ""
    shape = "x".join(str(d) for d in t["shape"]) or "scalar"
    return f"    {t['name'] or '?':40} {t['dtype']:8} [{shape}]{quant}"


def format_description(info: dict[str, Any]) -> str:
    """The human-readable text of :func:`describe_model`'s dict."""
    size_kib = info["size"] / 1024
    lines = [f"{info['path']}", f"  size        {info['size']} bytes ({size_kib:.1f} KiB)",
             f"  sha256      {info['sha256']}",
             f"  loads       {'yes (' + info['backend'] + ')' if info['loads'] else 'NO'}"]
    if info.get("load_error"):
        lines.append(f"  error       {info['load_error']}")
    lines.append(f"  quantized   {info['quantization']}")
    if "schema_version" in info:
        lines.append(f"  schema      v{info['schema_version']}, {info['subgraphs']} subgraph(s)"
                     + (f", metadata: {', '.join(info['metadata'])}" if info["metadata"] else ""))
    if info["inputs"]:
        lines.append("  inputs")
        lines += [_fmt_tensor(t) for t in info["inputs"]]
        lines.append(f"  pixels fed  {'; '.join(info['input_mapping'])}")
        lines.append("  outputs")
        lines += [_fmt_tensor(t) for t in info["outputs"]]
    if info.get("weights"):
        w = ", ".join(f"{k} {n}" for k, n in info["weights"].items())
        a = ", ".join(f"{k} {n}" for k, n in info["activations"].items())
        lines.append(f"  tensors     constants: {w}; activations: {a}")
    ops = info.get("ops") or {}
    if ops:
        lines.append(f"  ops         {sum(ops.values())} nodes, {len(ops)} kinds")
        lines += [f"    {n:5} {name}" for name, n in ops.items()]
    if info.get("custom_ops"):
        lines.append(f"  custom ops  {', '.join(info['custom_ops'])}")
    return "\n".join(lines)
