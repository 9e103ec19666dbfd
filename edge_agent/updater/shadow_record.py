"""The shadow candidate's record on disk, so a shadow survives a restart of the agent.

``<store>/shadow/`` holds the candidate (``<sha256>.tflite``, ``<sha256>.labels``) apart from
the active model, and ``shadow.json``: the signed manifest (verified again at start), the
sampling settings, the model it was compared against, and the running totals
(:meth:`edge_agent.shadow.ShadowRunner.state`, saved whenever figures are reported and when
the agent stops). Written atomically (temporary file, then ``os.replace``); the record is
removed when the shadow ends (promoted, rejected, or stopped because the active model
changed).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD = "shadow.json"


class ShadowRecord:
    """Reads and writes ``<dir>/shadow.json`` (thread-safe).

    Args:
        directory: the store's ``shadow`` folder.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / RECORD
        self._lock = threading.Lock()

    def save(self, record: Mapping[str, Any]) -> None:
        """Write a new record (a shadow started)."""
        with self._lock:
            self._write(dict(record))

    def save_state(self, sha256: str, state: Mapping[str, Any]) -> bool:
        """Store the running totals in the record of candidate ``sha256``.

        Returns:
            False when there is no record of that candidate (it ended meanwhile).
        """
        with self._lock:
            record = self._read()
            if record is None or record.get("sha256") != sha256:
                return False
            record["state"] = dict(state)
            self._write(record)
            return True

    def load(self) -> dict[str, Any] | None:
        """The record, or None when there is none.

        Raises:
            ValueError: the file is there but not a usable record (what is wrong).
        """
        with self._lock:
            return self._read()

    def clear(self) -> None:
        """Remove the record (the shadow ended)."""
        with self._lock:
            self.path.unlink(missing_ok=True)

    def _read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ValueError(f"{self.path}: {exc}") from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}: not JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) \
                or not isinstance(record.get("manifest"), dict):
            raise ValueError(f"{self.path}: not a shadow record (no sha256 or manifest)")
        return record

    def _write(self, record: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


__all__ = ["ShadowRecord"]
