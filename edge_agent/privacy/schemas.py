"""The published JSON Schemas of every outgoing message kind, loaded and compiled once.

The schemas ship inside the package (``edge_agent/schemas/*.json``, one file per kind as the
contract's :class:`~edge_agent.contract.messages.MessageSpec` names it); ``docs/schemas/`` is
generated from them and the specs (:mod:`edge_agent.contract.schemagen`). Every schema
closes its objects (``additionalProperties: false``) and bounds every array and string, so a
payload that validates cannot smuggle image data or a long numeric array off the device.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from edge_agent.contract.messages import SCHEMA_IDS, SPECS
from edge_agent.errors import PublishError

__all__ = ["SCHEMA_FILES", "SCHEMA_IDS", "load_schema", "validate", "validator"]

try:  # generates Python code per schema: about 20x faster than jsonschema on the hot path
    import fastjsonschema

    HAVE_FASTJSONSCHEMA = True
except ImportError:  # pragma: no cover - jsonschema alone is correct, only slower
    HAVE_FASTJSONSCHEMA = False

SCHEMA_FILES: dict[str, str] = {kind: spec.schema_file for kind, spec in SPECS.items()}
"""Message kind -> schema file in ``edge_agent/schemas`` (from the contract's specs)."""

_lock = threading.Lock()


def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (as a dict) for messages of ``kind``.

    Raises:
        KeyError: no schema for that kind.
    """
    # one child per joinpath: Traversable.joinpath takes a single argument before Python 3.11
    schema_file = resources.files("edge_agent").joinpath("schemas").joinpath(SCHEMA_FILES[kind])
    text = schema_file.read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(kind: str) -> Draft202012Validator:
    schema = load_schema(kind)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validator(kind: str) -> Draft202012Validator:
    """The jsonschema validator for ``kind`` (compiled on first use, then shared)."""
    with _lock:
        return _validator(kind)


@cache
def _fast_validator(kind: str) -> Callable[[Any], Any] | None:
    if not HAVE_FASTJSONSCHEMA:
        return None
    fn: Callable[[Any], Any] = fastjsonschema.compile(load_schema(kind))
    return fn


def fast_validator(kind: str) -> Callable[[Any], Any] | None:
    """The fastjsonschema function for ``kind``, or None when fastjsonschema is missing."""
    with _lock:
        return _fast_validator(kind)


def validate(kind: str, instance: Any) -> None:
    """Check ``instance`` (parsed JSON) against the schema of ``kind``.

    The fast generated validator decides; on a failure jsonschema explains it (and if the two
    ever disagree the payload is still refused: fail closed).

    Raises:
        PublishError: it does not validate; the message names the failing path and rule,
            never the offending value.
    """
    fast = fast_validator(kind)
    if fast is not None:
        try:
            fast(instance)
            return
        except fastjsonschema.JsonSchemaException:
            pass
    error = next(iter(validator(kind).iter_errors(instance)), None)
    if error is not None:
        raise PublishError(f"{kind} payload breaks its schema at {_where(error)}: "
                           f"{error.validator} {_rule(error)}")
    if fast is not None:
        raise PublishError(f"{kind} payload refused by the generated validator")


def _where(error: ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(root)"


def _rule(error: ValidationError) -> str:
    # the rule's own value (a bound, a pattern, a type), not the payload's: logs carry no content
    value = error.validator_value
    if isinstance(value, (dict, list)):
        return ""
    return str(value)[:80]
