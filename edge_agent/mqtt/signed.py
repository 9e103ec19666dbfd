"""Signed commands: canonical JSON, Ed25519 keys, signing, and the persisted nonce cache.

Keys follow ``edge-agent model keygen``: ``signing.pub`` holds the raw 32-byte public key in
base64 on one line (PEM is accepted too); a key is named by its ``key_id``, the first 16 hex
characters of sha256 of the raw public key. The signature covers the canonical JSON (sorted
keys, no spaces, UTF-8) of the command without ``signature``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import signing
from edge_agent.errors import ConfigError, UpdateError

logger = logging.getLogger(__name__)

NONCE_FILE = "command_nonces.json"
MAX_NONCES = 10_000


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """What a command's signature covers (``signature`` left out; NaN is refused)."""
    return signing.canonical_json(obj, allow_nan=False)


key_id_of = signing.key_id
sign_command = signing.sign_command


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file or a one-line base64 raw key (``signing.pub``).

    Raises:
        ConfigError: unreadable file or not an Ed25519 key.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"commands.public_keys: cannot read {path}: {exc}") from None
    try:
        return signing.parse_public_key(text, str(path))
    except UpdateError as exc:
        raise ConfigError(f"commands.public_keys: {path} is not an Ed25519 public key "
                          f"(PEM or base64 raw 32 bytes): {exc}") from None


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
