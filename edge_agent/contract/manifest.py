"""The signed model manifest (``edge-agent/model-manifest@1``), declared once.

Each :class:`ManifestField` names one field: the :class:`~edge_agent.updater.manifest.Manifest`
attribute it fills, whether it is required, its default, its check (which raises
:class:`~edge_agent.errors.UpdateError` with the message an operator sees) and its JSON Schema.
:func:`~edge_agent.updater.manifest.parse_manifest` runs the checks in table order;
``docs/schemas/model_manifest.json`` is generated from the table
(:mod:`edge_agent.contract.schemagen`). Unknown fields are kept (newer signers may add fields)
and covered by the signature, so the schema is open.

Adding a manifest field is: one entry here, one attribute on ``Manifest``, one test.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import UpdateError

SCHEMA = "edge-agent/model-manifest@1"
SCHEMA_FILE = "model_manifest.json"
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
TARGET_NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")
MAX_LABELS_CHARS = 1024 * 1024
MAX_MANIFEST_BYTES = 2 * 1024 * 1024
MAX_TARGETS = 16
MAX_BOUND_NAMES = 1024

Check = Callable[[Any, Mapping[str, Any]], Any]
"""``check(value, manifest_object)`` -> the attribute's value; raises ``UpdateError``."""


@dataclass(frozen=True, slots=True)
class TargetFile:
    """The model file for one execution target, as the manifest names it."""

    sha256: str
    size: int
    url: str | None = None


@dataclass(frozen=True)
class ManifestField:
    """What the contract says about one manifest field.

    Attributes:
        key: the JSON key.
        attr: the ``Manifest`` attribute it fills (None: checked, not kept as an attribute).
        description: one line for the generated schema.
        schema: the field's JSON Schema.
        check: validates the value (None when absent) against the whole object and returns
            the attribute's value.
        required: the key must be present (the check refuses a missing value).
    """

    key: str
    attr: str | None
    description: str
    schema: dict[str, Any]
    check: Check
    required: bool = False


def _schema(value: Any, _obj: Mapping[str, Any]) -> None:
    if value != SCHEMA:
        raise UpdateError(f"manifest schema must be {SCHEMA!r}, got {value!r}")


def check_name(name: Any) -> str:
    """A model name: 1-128 of ``[A-Za-z0-9._-]``, no leading dot (never a path)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith("."):
        raise UpdateError(f"invalid name {name!r}: use 1-128 of [A-Za-z0-9._-], not starting "
                          "with '.' (no paths)")
    return name


def _int(key: str, minimum: int) -> Check:
    def check(value: Any, _obj: Mapping[str, Any]) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UpdateError(f"manifest {key} must be an integer >= {minimum}, got {value!r}")
        return value
    return check


def check_sha(value: Any, key: str) -> str:
    """64 lowercase hex characters."""
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise UpdateError(f"manifest {key} must be 64 lowercase hex characters")
    return value


def _url(key: str) -> Check:
    def check(value: Any, _obj: Mapping[str, Any]) -> str | None:
        if value is not None and (not isinstance(value, str) or not value):
            raise UpdateError(f"manifest {key} must be a non-empty string")
        return value  # type: ignore[no-any-return]
    return check


def _labels(value: Any, obj: Mapping[str, Any]) -> str | None:
    if value is not None:
        if not isinstance(value, str) or len(value) > MAX_LABELS_CHARS:
            raise UpdateError("manifest labels must be text of at most 1 M characters")
        if obj.get("labels_sha256") is None:
            raise UpdateError("manifest has labels but no labels_sha256")
    return value  # type: ignore[no-any-return]


def _labels_sha(value: Any, obj: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    sha = check_sha(value, "labels_sha256")
    labels = obj.get("labels")
    if labels is None:
        raise UpdateError("manifest has labels_sha256 but no inline labels")
    if hashlib.sha256(labels.encode()).hexdigest() != sha:
        raise UpdateError("labels do not match labels_sha256")
    return sha


def _bool(key: str) -> Check:
    def check(value: Any, _obj: Mapping[str, Any]) -> bool:
        value = False if value is None else value
        if not isinstance(value, bool):
            raise UpdateError(f"manifest {key} must be true or false")
        return value
    return check


def _string(key: str) -> Check:
    def check(value: Any, _obj: Mapping[str, Any]) -> str:
        value = "" if value is None else value
        if not isinstance(value, str):
            raise UpdateError(f"manifest {key} must be a string")
        return value
    return check


def _targets(value: Any, _obj: Mapping[str, Any]) -> dict[str, TargetFile]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_TARGETS:
        raise UpdateError(f"manifest targets must be an object of at most {MAX_TARGETS} "
                          "target names")
    out: dict[str, TargetFile] = {}
    for name, entry in value.items():
        if not isinstance(name, str) or not TARGET_NAME_RE.fullmatch(name):
            raise UpdateError(f"manifest targets: invalid target name {name!r} (use 1-64 of "
                              "[a-z0-9_-])")
        if not isinstance(entry, dict):
            raise UpdateError(f"manifest targets.{name} must be an object with sha256 and size")
        url = entry.get("url")
        if url is not None and (not isinstance(url, str) or not url):
            raise UpdateError(f"manifest targets.{name}.url must be a non-empty string")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise UpdateError(f"manifest targets.{name}.size must be an integer >= 1, "
                              f"got {size!r}")
        out[name] = TargetFile(check_sha(entry.get("sha256"), f"targets.{name}.sha256"),
                               size, url)
    return out


def _decoder(value: Any, _obj: Mapping[str, Any]) -> str | None:
    if value is not None and (not isinstance(value, str) or not NAME_RE.fullmatch(value)):
        raise UpdateError("manifest decoder must be a decoder kind such as 'ssd'")
    return value  # type: ignore[no-any-return]


def _names(key: str) -> Check:
    def check(value: Any, _obj: Mapping[str, Any]) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or len(items) > MAX_BOUND_NAMES or not all(
                isinstance(v, str) and 0 < len(v) <= 128 for v in items):
            raise UpdateError(f"manifest {key} must be a name or a non-empty list of names")
        return tuple(items)
    return check


_SHA = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_URL = {"type": "string", "minLength": 1}
_NAME = {"type": "string", "minLength": 1, "maxLength": 128}
_BOUND = {"oneOf": [_NAME, {"type": "array", "minItems": 1, "maxItems": MAX_BOUND_NAMES,
                            "items": _NAME}]}

FIELDS: tuple[ManifestField, ...] = (
    ManifestField("schema", None, "Always edge-agent/model-manifest@1.",
                  {"const": SCHEMA}, _schema, required=True),
    ManifestField("name", "name", "The model's name (never a path).",
                  {"type": "string", "pattern": "^(?!\\.)[A-Za-z0-9._-]{1,128}$"},
                  lambda v, _o: check_name(v), required=True),
    ManifestField("version", "version", "Monotonic version; a lower one is a downgrade.",
                  {"type": "integer", "minimum": 0}, _int("version", 0), required=True),
    ManifestField("size", "size", "Bytes of the model file every target without its own "
                  "file runs.", {"type": "integer", "minimum": 1}, _int("size", 1),
                  required=True),
    ManifestField("sha256", "sha256", "sha256 of that model file.", _SHA,
                  lambda v, _o: check_sha(v, "sha256"), required=True),
    ManifestField("url", "url", "Where to download the model (optional: it may come inline).",
                  _URL, _url("url")),
    ManifestField("labels", "labels", "Inline labels, one per line (covered by the "
                  "signature).", {"type": "string", "maxLength": MAX_LABELS_CHARS}, _labels),
    ManifestField("labels_sha256", "labels_sha256", "sha256 of labels (required with labels).",
                  _SHA, _labels_sha),
    ManifestField("allow_downgrade", "allow_downgrade", "Install even below the installed "
                  "version.", {"type": "boolean", "default": False}, _bool("allow_downgrade")),
    ManifestField("created", "created", "When it was signed (UTC, ISO 8601).",
                  {"type": "string", "default": ""}, _string("created")),
    ManifestField("key_id", "key_id", "Id of the Ed25519 key that signed it (16 hex).",
                  {"type": "string", "default": ""}, _string("key_id")),
    ManifestField("signature", "signature", "Base64 Ed25519 signature over the canonical JSON "
                  "of every other field.", {"type": "string", "default": ""},
                  _string("signature")),
    ManifestField("targets", "targets", "One model file per execution target, by target name.",
                  {"type": "object", "maxProperties": MAX_TARGETS,
                   "propertyNames": {"pattern": "^[a-z0-9_-]{1,64}$"},
                   "additionalProperties": {
                       "type": "object", "required": ["sha256", "size"],
                       "properties": {"sha256": _SHA, "size": {"type": "integer", "minimum": 1},
                                      "url": _URL}}}, _targets),
    ManifestField("decoder", "decoder", "The decoder kind the model is made for; refused on a "
                  "pipeline decoding with another.",
                  {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}, _decoder),
    ManifestField("pipeline", "pipelines", "Pipeline name(s) it may be installed on.",
                  _BOUND, _names("pipeline")),
    ManifestField("device", "devices", "Device id(s) it may be installed on.",
                  _BOUND, _names("device")),
    ManifestField("group", "groups", "Fleet group(s) it may be installed through.",
                  _BOUND, _names("group")),
    # read by a shadow evaluation only (edge_agent.shadow.ShadowGate.parse, with its own
    # messages); a plain update keeps it in raw, signed, as before
    ManifestField("shadow", None, "Gate for promoting a shadowed candidate by itself.",
                  {"type": "object", "required": ["frames"], "additionalProperties": False,
                   "properties": {
                       "frames": {"type": "integer", "minimum": 1, "maximum": 10**7},
                       "min_recall": {"type": "number", "minimum": 0, "maximum": 1},
                       "min_precision": {"type": "number", "minimum": 0, "maximum": 1},
                       "max_latency_ratio": {"type": "number", "minimum": 0,
                                             "maximum": 1000}}},
                  lambda _v, _o: None),
)


def check_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Every field's check in table order; ``Manifest`` attribute -> value.

    Raises:
        UpdateError: the first field that is missing or malformed, with its message.
    """
    out: dict[str, Any] = {}
    for f in FIELDS:
        value = f.check(obj.get(f.key), obj)
        if f.attr is not None:
            out[f.attr] = value
    return out


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (open: unknown fields are kept and signed)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edge-agent.dev/schemas/{SCHEMA_FILE}",
        "title": "Signed model manifest (edge-agent/model-manifest@1)",
        "type": "object",
        "required": [f.key for f in FIELDS if f.required],
        "properties": {f.key: {"description": f.description, **f.schema} for f in FIELDS},
        "additionalProperties": True,
        "x-edge-agent": {"max_bytes": MAX_MANIFEST_BYTES,
                         "signed": "Ed25519 over the canonical JSON without signature"},
    }
