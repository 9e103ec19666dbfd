"""JSON Schema from Python types: each payload field is written once, as a typed annotation.

A payload is a :class:`~typing.TypedDict` (zero cost at run time: the builders still make
plain dicts, and mypy checks their keys and value types against it). Constraints that Python
types cannot say (lengths, patterns, ranges, descriptions) ride along as :class:`J` metadata
in :data:`~typing.Annotated`. :func:`schema_of` turns such a type into JSON Schema:

==========================================  ===============================================
``str`` / ``int`` / ``float`` / ``bool``    ``{"type": "string" | "integer" | "number" |
                                            "boolean"}``
``Literal["a"]`` / ``Literal["a", "b"]``    ``{"const": "a"}`` / ``{"enum": ["a", "b"]}``
``str | None`` (scalars)                    ``{"type": ["string", "null"]}``
``SomeTypedDict | None``                    ``{"anyOf": [{...}, {"type": "null"}]}``
``list[X]``                                 ``{"type": "array", "items": X}`` (``list[object]``:
                                            any array)
``dict[str, X]``                            ``{"type": "object", "additionalProperties": X}``
a TypedDict                                 a closed object: ``additionalProperties: false``,
                                            its required keys, its properties in order
``Annotated[X, J(key=value, ...)]``         X's schema with those keywords added (or
                                            replaced: ``J(additionalProperties=...)`` opens
                                            a TypedDict)
==========================================  ===============================================

Only the build of ``edge_agent/schemas`` (:mod:`edge_agent.contract.schemagen`) and its
staleness test call this; the agent loads the generated files, so start-up pays nothing.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Literal, Union, get_args, get_origin

from typing_extensions import NotRequired, Required, is_typeddict

JsonSchema = dict[str, object]

_NESTED = frozenset({"items", "properties", "additionalProperties", "anyOf", "oneOf", "allOf"})
_SCALARS: dict[object, str] = {str: "string", float: "number", int: "integer", bool: "boolean",
                               type(None): "null"}


class J:
    """JSON Schema keywords added to the schema of the annotated type.

    ``J(maxLength=64, pattern="^[a-z]+$")``; a keyword that is no Python name goes in
    ``J({"$comment": ...})``.
    """

    __slots__ = ("keywords",)

    def __init__(self, keywords: JsonSchema | None = None, /, **more: object) -> None:
        """Keep ``keywords`` and ``more`` in the order given."""
        self.keywords: JsonSchema = {**(keywords or {}), **more}

    def __repr__(self) -> str:
        return f"J({self.keywords!r})"


def _is_typeddict(tp: object) -> bool:
    return isinstance(tp, type) and is_typeddict(tp)


def _object(td: type) -> JsonSchema:
    hints = typing.get_type_hints(td, include_extras=True)
    total = bool(getattr(td, "__total__", True))
    # from the evaluated hints, not __required_keys__ (wrong under postponed annotations)
    required = [key for key, tp in hints.items() if get_origin(tp) is Required
                or (total and get_origin(tp) is not NotRequired)]
    props = {key: schema_of(tp) for key, tp in hints.items()}
    out: JsonSchema = {"type": "object", "additionalProperties": False}
    if required:
        out["required"] = required
    out["properties"] = props
    return out


def _union(members: tuple[object, ...]) -> JsonSchema:
    schemas = [schema_of(m) for m in members]
    typed = [s.get("type") for s in schemas]
    # members without nested schemas fold into one type list (each keyword of JSON Schema
    # applies to its own types only: maxLength to strings, minimum to numbers)
    if all(isinstance(t, str) for t in typed) and not any(_NESTED & s.keys() for s in schemas):
        merged: JsonSchema = {"type": typed}
        for s in schemas:
            merged.update({k: v for k, v in s.items() if k != "type"})
        return merged
    return {"anyOf": schemas}


def schema_of(tp: object) -> JsonSchema:
    """The JSON Schema of the type ``tp`` (see the module docstring for the mapping)."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        out = schema_of(base)
        for m in meta:
            if isinstance(m, J):
                out.update(m.keywords)
        return out
    if origin in (Required, NotRequired):
        return schema_of(get_args(tp)[0])
    if origin is Literal:
        values = list(get_args(tp))
        return {"const": values[0]} if len(values) == 1 else {"enum": values}
    if origin in (Union, types.UnionType):
        return _union(get_args(tp))
    if origin is list:
        item = get_args(tp)[0]
        return {"type": "array"} if item is object else {"type": "array",
                                                         "items": schema_of(item)}
    if origin is dict:
        return {"type": "object", "additionalProperties": schema_of(get_args(tp)[1])}
    if _is_typeddict(tp):
        return _object(typing.cast(type, tp))
    if tp is object:
        return {}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    raise TypeError(f"no JSON Schema for {tp!r}")


def document(td: type, *, schema_id: str, title: str, extra: JsonSchema | None = None,
             ) -> JsonSchema:
    """A whole schema file: ``$schema``, ``$id``, ``title``, then the TypedDict's object."""
    doc: JsonSchema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                       "$id": f"https://edge-agent.dev/schemas/{schema_id}", "title": title}
    doc.update(schema_of(td))
    doc.update(extra or {})
    return doc
