"""Ed25519 keys, canonical JSON and signatures for model manifests and signed commands.

Shared by the updater (manifests, operator CLI) and the MQTT command channel, like
``errors.py`` and ``types.py``: one key convention, one implementation.

Key files (made by ``edge-agent model keygen --out DIR``):

* ``DIR/signing.key``: the private key, PEM PKCS#8, unencrypted, mode 0600. It is created
  with ``O_CREAT | O_EXCL`` and mode 0o600 so it is never readable by others, not even for a
  moment, and an existing key is never overwritten.
* ``DIR/signing.pub``: one line, the base64 of the raw 32-byte public key. PEM public keys
  are accepted too.

A key is named by its ``key_id``: the first 16 hex characters of sha256(raw public key).
Everything that is signed is signed as canonical JSON: sorted keys, no spaces, UTF-8
(``ensure_ascii=False``), without the ``signature`` field itself.

Signed commands (rollback, config, restart) use the same keys and add ``ts`` (unix seconds),
``nonce`` (random hex) and ``key_id`` before signing; see :func:`sign_command` and
:func:`verify_command`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.errors import ConfigError, UpdateError

PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


def canonical_json(obj: Mapping[str, Any], *, allow_nan: bool = True) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, UTF-8, ``signature`` left out."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=allow_nan).encode()


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """The first 16 hex characters of sha256 of the raw public key."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()[:16]


def generate_key_pair(out_dir: str | Path) -> tuple[Path, Path, str]:
    """Write ``signing.key`` (0600) and ``signing.pub`` into ``out_dir``.

    Returns:
        (private key path, public key path, key_id).

    Raises:
        UpdateError: a key file already exists there (keys are never overwritten).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    for p in (priv_path, pub_path):
        if p.exists():
            raise UpdateError(f"{p} already exists: keys are never overwritten; "
                              "choose another --out folder")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    pub = key.public_key()
    pub_path.write_text(base64.b64encode(raw_public_bytes(pub)).decode() + "\n")
    return priv_path, pub_path, key_id(pub)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM PKCS#8 file.

    Raises:
        UpdateError: the file is missing, unreadable or not an unencrypted Ed25519 key.
    """
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except OSError as exc:
        raise UpdateError(f"cannot read private key {p}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UpdateError(f"{p} is not an unencrypted PEM private key ({exc}); make one with "
                          "'edge-agent model keygen --out DIR'") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdateError(f"{p} is not an Ed25519 key; make one with 'edge-agent model keygen'")
    return key


def parse_public_key(text: str, source: str = "<key>") -> Ed25519PublicKey:
    """A public key from one base64 line (raw 32 bytes) or a PEM block.

    Raises:
        UpdateError: the text is neither.
    """
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped.encode())
        except ValueError as exc:
            raise UpdateError(f"{source}: not a PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise UpdateError(f"{source}: not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UpdateError(f"{source}: expected one base64 line with a raw Ed25519 public key") \
            from exc
    if len(raw) != 32:
        raise UpdateError(f"{source}: expected 32 raw key bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """One public key file (``signing.pub`` format or PEM)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UpdateError(f"cannot read public key {p}: {exc.strerror or exc}") from exc
    return parse_public_key(text, str(p))


def load_public_keys(paths: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """The configured public keys by key_id.

    Raises:
        ConfigError: a file is missing or not a public key (one line per problem).
    """
    keys: dict[str, Ed25519PublicKey] = {}
    problems: list[str] = []
    for path in paths:
        try:
            key = load_public_key(path)
        except UpdateError as exc:
            problems.append(f"updates.public_keys: {exc}")
            continue
        keys[key_id(key)] = key
    if problems:
        raise ConfigError(problems)
    return keys


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> str:
    """The base64 Ed25519 signature of ``data``."""
    return base64.b64encode(key.sign(data)).decode()


def verify_bytes(key: Ed25519PublicKey, data: bytes, signature_b64: str) -> bool:
    """Whether ``signature_b64`` is a valid signature of ``data`` by ``key``."""
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return False
    if len(sig) != 64:
        return False
    try:
        key.verify(sig, data)
    except InvalidSignature:
        return False
    return True


def sign_object(obj: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``obj`` plus ``key_id`` and a ``signature`` over the canonical JSON of the rest."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    body["key_id"] = key_id(key.public_key())
    return {**body, "signature": sign_bytes(key, canonical_json(body))}


def verify_object(obj: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> str:
    """Check ``obj['signature']`` by ``obj['key_id']`` over the canonical JSON of the rest.

    Returns:
        the key_id that signed it.

    Raises:
        UpdateError: unsigned, unknown key, or a bad signature.
    """
    signature = obj.get("signature")
    if not isinstance(signature, str) or not signature:
        raise UpdateError("unsigned: no signature")
    kid = obj.get("key_id")
    if not isinstance(kid, str) or not kid:
        raise UpdateError("unsigned: no key_id")
    key = keys.get(kid)
    if key is None:
        raise UpdateError(f"signed by an unknown key {kid!r} (not in updates.public_keys)")
    body = {k: v for k, v in obj.items() if k != "signature"}
    if not verify_bytes(key, canonical_json(body), signature):
        raise UpdateError(f"bad signature (key {kid}): the signed fields were changed or the "
                          "signature belongs to other content")
    return kid


def sign_command(command: Mapping[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A signed command: ``command`` plus ``ts``, ``nonce``, ``key_id`` and ``signature``."""
    body = dict(command)
    body.setdefault("ts", time.time())  # a caller (a test, a replay check) may fix them
    body.setdefault("nonce", secrets.token_hex(16))
    return sign_object(body, key)


def verify_command(command: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey], *,
                   max_skew_s: float, now: float | None = None) -> str:
    """Check a signed command's signature and timestamp (the caller tracks nonces).

    Returns:
        the key_id that signed it.

    Raises:
        UpdateError: bad or missing signature, unknown key, missing nonce, or ``ts`` further
            than ``max_skew_s`` from now.
    """
    kid = verify_object(command, keys)
    ts = command.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise UpdateError("signed command without a numeric ts")
    if not isinstance(command.get("nonce"), str) or not command["nonce"]:
        raise UpdateError("signed command without a nonce")
    skew = abs((time.time() if now is None else now) - float(ts))
    if skew > max_skew_s:
        raise UpdateError(f"command timestamp is {skew:.0f} s off (max {max_skew_s:.0f} s): "
                          "check the clocks or resend")
    return kid
