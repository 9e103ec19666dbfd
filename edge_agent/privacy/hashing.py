"""The per-device secret used to hash identifying fields (HMAC-SHA256).

Hashes stay stable across restarts of one device (so a subscriber can tell "the same plate
again") and cannot be reversed or compared across devices without the secret.
"""

from __future__ import annotations

import os
from pathlib import Path

SALT_BYTES = 32


def load_salt(state_dir: str | Path) -> bytes:
    """The secret in ``state_dir/privacy/salt``; created (mode 0600) on first use."""
    path = Path(state_dir) / "privacy" / "salt"
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, os.urandom(SALT_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path.read_bytes()
