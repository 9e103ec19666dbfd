"""The signed model manifest (``edge-agent/model-manifest@1``): parse, validate, sign, verify.

```json
{"schema": "edge-agent/model-manifest@1", "name": "detector", "version": 7,
 "sha256": "<hex>", "size": 4183312, "url": "https://... (optional)",
 "labels": "person\\nbicycle\\n... (optional, inline)", "labels_sha256": "<hex> (with labels)",
 "allow_downgrade": false, "created": "2026-11-28T12:00:00Z",
 "key_id": "<16 hex>", "signature": "<base64 Ed25519>"}
```

A manifest may also carry one file per execution target (additive; the top-level ``sha256``,
``size`` and ``url`` stay the model every target without its own file runs, usually the CPU's):

```json
"targets": {"edgetpu": {"sha256": "<hex>", "size": 4210000, "url": "https://... (optional)"}}
```

Target names are the device's target names (``edgetpu``, ``cpu`` or a target's ``name``). A
device downloads only the files of targets it has, verifies each against its sha256 and size
and validates it on its own target; the signature covers the whole object.

Labels travel inside the manifest as inline text (``labels``), so the signature covers them and
no second download can fail or be swapped; ``labels_sha256`` is their sha256 and is checked.
Label files are small (ImageNet's 1001 labels are 22 KB). Unknown fields are kept and covered
by the signature (newer signers may add fields); they are otherwise ignored.

Optional target fields bind a manifest to where it may be installed, inside the signature:
``pipeline``, ``device`` and ``group`` (each a name or a list of names; the update is refused
on a pipeline, device or fleet group not listed) and ``decoder`` (the decoder kind the model
is made for; refused on a pipeline whose decoder is another kind). See :func:`check_destination`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.contract.manifest import (
    MAX_LABELS_CHARS,
    MAX_MANIFEST_BYTES,
    MAX_TARGETS,
    NAME_RE,
    SCHEMA,
    SHA256_RE,
    TARGET_NAME_RE,
    TargetFile,
    check_fields,
)
from edge_agent.errors import UpdateError
from edge_agent.signing import sign_object, verify_object

__all__ = ["MAX_LABELS_CHARS", "MAX_MANIFEST_BYTES", "MAX_TARGETS", "NAME_RE", "SCHEMA",
           "SHA256_RE", "TARGET_NAME_RE", "Destination", "Manifest", "TargetFile",
           "build_manifest", "check_destination", "parse_manifest", "verify_manifest"]


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest (its signature is checked by :func:`verify_manifest`).

    The fields, their checks and error messages are declared once in
    :data:`edge_agent.contract.manifest.FIELDS`; ``docs/schemas/model_manifest.json`` is
    generated from them.

    Attributes:
        raw: every field as received, the exact object the signature covers.
    """

    name: str
    version: int
    sha256: str
    size: int
    created: str
    key_id: str
    signature: str
    url: str | None = None
    labels: str | None = None
    labels_sha256: str | None = None
    allow_downgrade: bool = False
    targets: Mapping[str, TargetFile] = field(default_factory=dict)
    pipelines: tuple[str, ...] | None = None
    devices: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    decoder: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def total_size(self) -> int:
        """Bytes of the model and every per-target file."""
        return self.size + sum(t.size for t in self.targets.values())

    def to_json(self) -> str:
        """The manifest as stored next to the model (the raw signed object)."""
        return json.dumps(dict(self.raw), sort_keys=True, ensure_ascii=False, indent=1)

    def describe(self) -> dict[str, Any]:
        """``{name, version, sha256}`` for state messages."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def parse_manifest(data: str | bytes | Mapping[str, Any]) -> Manifest:
    """A :class:`Manifest` from JSON text or a decoded object, strictly validated.

    Raises:
        UpdateError: not JSON, wrong schema, a missing or malformed field, a name with a path
            in it, or labels that do not match labels_sha256.
    """
    if isinstance(data, (str, bytes)):
        if len(data) > MAX_MANIFEST_BYTES:
            raise UpdateError("manifest is larger than 2 MB")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UpdateError(f"manifest is not JSON: {exc}") from exc
    else:
        obj = dict(data)
    if not isinstance(obj, dict):
        raise UpdateError("manifest must be a JSON object")
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError, RecursionError) as exc:
        # e.g. a lone surrogate ("\ud800"): valid JSON, but no UTF-8 to sign or verify
        raise UpdateError(f"manifest is not valid UTF-8 JSON text: {type(exc).__name__}") \
            from None
    return Manifest(**check_fields(obj), raw=obj)


@dataclass(frozen=True)
class Destination:
    """Where an update is being installed, for :func:`check_destination`.

    Attributes:
        pipeline: the pipeline's name.
        device: this device's id.
        groups: the fleet groups this device belongs to (``mqtt.groups``).
        via_group: the group whose topic the command arrived on (None: the device's own).
        name: the model name the pipeline accepts (``model.name`` in its config), or None.
        decoder: the decoder kind the pipeline runs (never ``auto``), or None.
    """

    pipeline: str
    device: str
    groups: tuple[str, ...] = ()
    via_group: str | None = None
    name: str | None = None
    decoder: str | None = None


def check_destination(manifest: Manifest, target: Destination) -> None:
    """Refuse a manifest signed for another pipeline, device, group, model name or decoder.

    Raises:
        UpdateError: ``wrong target: ...`` naming the field that does not match.
    """
    if manifest.pipelines is not None and target.pipeline not in manifest.pipelines:
        raise UpdateError(f"wrong target: the manifest is signed for pipeline "
                          f"{', '.join(manifest.pipelines)}, not {target.pipeline}")
    if manifest.devices is not None and target.device not in manifest.devices:
        raise UpdateError("wrong target: the manifest is signed for another device")
    if manifest.groups is not None:
        mine = set(target.groups) if target.via_group is None else {target.via_group}
        if not mine & set(manifest.groups):
            raise UpdateError("wrong target: the manifest is signed for another group")
    if target.name is not None and manifest.name != target.name:
        raise UpdateError(f"wrong target: model {manifest.name!r} is not {target.name!r}, the "
                          "model.name this pipeline accepts")
    if manifest.decoder is not None and target.decoder is not None \
            and manifest.decoder != target.decoder:
        raise UpdateError(f"wrong decoder: the manifest is for decoder {manifest.decoder!r}, "
                          f"this pipeline decodes with {target.decoder!r}")


def verify_manifest(manifest: Manifest, keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check the manifest's signature against the configured keys by its key_id.

    Returns:
        the key_id that signed it.

    Raises:
        UpdateError: unsigned, signed by an unknown key, or a signature over other content.
    """
    if not keys:
        raise UpdateError("no public keys are configured (updates.public_keys): "
                          "updates cannot be verified")
    return verify_object(manifest.raw, keys)


def build_manifest(*, name: str, version: int, sha256: str, size: int, key: Ed25519PrivateKey,
                   url: str | None = None, labels: str | None = None,
                   allow_downgrade: bool = False, created: str | None = None,
                   extra: Mapping[str, Any] | None = None,
                   targets: Mapping[str, TargetFile] | None = None) -> Manifest:
    """A signed manifest (what ``edge-agent model sign`` writes); ``targets``: one file per
    execution target."""
    obj: dict[str, Any] = {
        "schema": SCHEMA, "name": name, "version": version, "sha256": sha256, "size": size,
        "created": created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if url:
        obj["url"] = url
    if labels is not None:
        obj["labels"] = labels
        obj["labels_sha256"] = hashlib.sha256(labels.encode()).hexdigest()
    if allow_downgrade:
        obj["allow_downgrade"] = True
    if targets:
        obj["targets"] = {n: {"sha256": t.sha256, "size": t.size,
                              **({"url": t.url} if t.url else {})}
                          for n, t in sorted(targets.items())}
    if extra:
        obj.update(extra)
    return parse_manifest(sign_object(obj, key))
