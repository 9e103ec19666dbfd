"""The anti-rollback floor of one pipeline: the highest model version ever installed.

``state_dir/models/<pipeline>/floor.json`` holds ``{"version": N, "downgrades": [...]}``:

* ``version``: the highest manifest version this pipeline ever installed. It only rises. An
  update must carry a version above it, so an old signed manifest (replayed from a capture of
  the broker, or still in the store) cannot undo a newer install or a signed rollback; a
  rollback (manual, signed, or by the watch) moves ``current`` back to ``previous`` and leaves
  the floor where it is. To serve the bytes of an older model again, sign them with a new,
  higher version.
* ``downgrades``: digests of the manifests installed as signed downgrades (``allow_downgrade``
  in both the device config and the manifest). Each such manifest works once: a replay of it
  is refused like any other old manifest.

When the file is missing (first start, or an agent from before the floor) it starts at the
highest version among the models the store still holds and trusts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from edge_agent.errors import UpdateError
from edge_agent.updater.manifest import Manifest

logger = logging.getLogger(__name__)

FLOOR_FILE = "floor.json"
MAX_DOWNGRADES = 256


def manifest_digest(manifest: Manifest) -> str:
    """What identifies one signed manifest: sha256 of its signature (16 hex characters)."""
    return hashlib.sha256(manifest.signature.encode()).hexdigest()[:32]


class RollbackFloor:
    """The persisted floor (see the module docstring).

    Args:
        path: ``state_dir/models/<pipeline>/floor.json``.
        initial: the floor to start from when the file is absent or unreadable.
    """

    def __init__(self, path: str | Path, initial: int = 0) -> None:
        self.path = Path(path)
        self.version = initial
        self.downgrades: list[str] = []
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
            version = obj["version"]
            downgrades = obj.get("downgrades", [])
            if not isinstance(version, int) or isinstance(version, bool) or version < 0 \
                    or not isinstance(downgrades, list):
                raise ValueError("malformed")
            self.version = max(version, initial)
            self.downgrades = [str(d) for d in downgrades][-MAX_DOWNGRADES:]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("anti-rollback floor %s unreadable (%s); using %d from the store",
                           self.path, exc, initial)

    def check(self, manifest: Manifest, allow_downgrade: bool) -> bool:
        """Whether ``manifest`` may be installed; True when it is a signed downgrade.

        Args:
            manifest: the verified manifest.
            allow_downgrade: ``updates.allow_downgrade`` of the device.

        Raises:
            UpdateError: the version is not above the floor and this is not a first use of a
                downgrade manifest the device allows.
        """
        if manifest.version > self.version:
            return False
        if allow_downgrade and manifest.allow_downgrade:
            if manifest_digest(manifest) in self.downgrades:
                raise UpdateError(f"replay: this downgrade manifest (version "
                                  f"{manifest.version}) was installed before; a signed "
                                  "downgrade works once")
            return True
        raise UpdateError(
            f"replay or downgrade refused: version {manifest.version} is not above "
            f"{self.version}, the highest version this pipeline ever installed (the "
            "anti-rollback floor); sign the model with a higher version, or a downgrade "
            "needs updates.allow_downgrade on the device and a manifest signed with "
            "--allow-downgrade")

    def record(self, manifest: Manifest, downgrade: bool) -> None:
        """Persist the floor after installing ``manifest`` (before it is made current)."""
        # imported here: cycle: updater.store imports this module
        from edge_agent.updater.store import write_atomic

        self.version = max(self.version, manifest.version)
        if downgrade:
            self.downgrades = [*self.downgrades, manifest_digest(manifest)][-MAX_DOWNGRADES:]
        write_atomic(self.path, json.dumps({"version": self.version,
                                            "downgrades": self.downgrades}).encode())
