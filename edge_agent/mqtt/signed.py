"""Signed commands: canonical JSON, Ed25519 keys, signing, and the persisted nonce cache.

Keys follow ``edge-agent model keygen``: ``signing.pub`` holds the raw 32-byte public key in
base64 on one line (PEM is accepted too); a key is named by its ``key_id``, the first 16 hex
characters of sha256 of the raw public key. The signature covers the canonical JSON (sorted
keys, no spaces, UTF-8) of the command without ``signature``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import ConfigError

logger = logging.getLogger(__name__)

NONCE_FILE = "command_nonces.json"
MAX_NONCES = 10_000


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: what a signature covers (``signature`` left out)."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex characters of sha256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or a one-line base64 raw key (``signing.pub``).

    Raises:
        ConfigError: unreadable file or not an Ed25519 key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"commands.public_keys: cannot read {path}: {exc}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            return key
        raw = base64.b64decode(data.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"commands.public_keys: {path} is not an Ed25519 public key "
                          f"(PEM or base64 raw 32 bytes): {exc}") from None


def sign_command(payload: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return ``payload`` with ``ts``, ``nonce``, ``key_id`` (when missing) and ``signature``.

    For operators and tests: ``sign_command({"request_id": "r1", "pipeline": "door",
    "command": "rollback"}, key)``.
    """
    out = dict(payload)
    out.pop("signature", None)
    out.setdefault("ts", time.time())
    out.setdefault("nonce", uuid.uuid4().hex)
    out.setdefault("key_id", key_id_of(private_key.public_key()))
    out["signature"] = base64.b64encode(private_key.sign(canonical_json(out))).decode("ascii")
    return out


class NonceCache:
    """Nonces already used, with their ts; bounded, persisted atomically under state_dir."""

    def __init__(self, path: Path, max_age_s: float, max_entries: int = MAX_NONCES) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self._seen = {str(k): float(v) for k, v in loaded.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("nonce cache %s unreadable (%s); starting empty", self.path, exc)

    def seen(self, nonce: str) -> bool:
        """Whether ``nonce`` was used before."""
        return nonce in self._seen

    def add(self, nonce: str, ts: float, now: float) -> None:
        """Remember ``nonce``; forget entries too old to pass the skew check anyway."""
        self._seen[nonce] = ts
        horizon = now - 2 * self.max_age_s
        self._seen = {k: v for k, v in self._seen.items() if v >= horizon}
        if len(self._seen) > self.max_entries:
            keep = sorted(self._seen.items(), key=lambda kv: kv[1])[-self.max_entries:]
            self._seen = dict(keep)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._seen), encoding="utf-8")
        os.replace(tmp, self.path)
