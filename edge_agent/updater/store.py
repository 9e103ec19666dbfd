"""The on-disk model store of one pipeline: content-addressed files and two pointers.

Layout of ``state_dir/models/<pipeline>/``::

    <sha256>.tflite          the model, named by its own hash
    <sha256>.labels.txt      its labels (from the manifest), when it has any
    <sha256>.manifest.json   the signed manifest it came with
    staging/<sha256>.part    a download in progress (resumed, or discarded; never activated)
    current                  pointer: "<sha256>" or "configured", optionally " trial"
    previous                 pointer: the model to roll back to

Pointers are small text files, not symlinks: they are replaced with ``os.replace`` after an
fsync of the new file (and the directory is fsynced after), which is just as atomic, works on
filesystems without symlinks (vfat boot partitions, some overlay setups), can say
"configured" (the model named in the config, version 0) and can carry the ``trial`` flag.

``trial`` marks a model that is still being watched after a swap. When the agent restarts
before the watch ended (a crash, a kill -9, or the model itself bringing the process down),
:meth:`ModelStore.resolve_active` does not trust it and falls back to ``previous``: a model
that crashes the device cannot keep it in a crash loop.

Crash safety: every file is complete before a pointer names it (written to a temporary name,
fsynced, renamed, directory fsynced). Pointer updates happen one ``os.replace`` at a time and
every intermediate state names valid models. At start :meth:`resolve_active` re-hashes the
current model against its stored manifest, re-verifies the manifest's signature against the
configured keys (a model planted in the store, or signed by a key since removed from the
config, is not trusted) and falls back to previous, then to the configured file, loudly.
``floor.json`` is the anti-rollback floor (:mod:`edge_agent.updater.floor`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.digest import (
    sha256_file as sha256_file,  # re-exported: tests and tools import it here
)
from edge_agent.errors import UpdateError
from edge_agent.updater.floor import FLOOR_FILE, RollbackFloor
from edge_agent.updater.manifest import Manifest, parse_manifest, verify_manifest

logger = logging.getLogger(__name__)

CONFIGURED = "configured"
_POINTER_RE = re.compile(r"([0-9a-f]{64}|configured)( trial)?")




def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True)
class Pointer:
    """What ``current`` or ``previous`` names."""

    target: str  # a sha256, or "configured"
    trial: bool = False


@dataclass(frozen=True)
class ActiveModel:
    """The model to serve, as resolved from the store.

    Attributes:
        source: "current", "previous" or "configured".
        reason: why the store fell back, or None when ``current`` was used as is.
        manifest: the stored manifest, None for the configured model.
        trial: the model is current but its watch has not passed yet.
        fell_back_from: ``{name, version, sha256}`` of the model that was not trusted when
            the store fell back (for the start-up ``rolled_back`` message).
    """

    path: Path
    labels_path: Path | None
    manifest: Manifest | None
    name: str
    version: int
    sha256: str
    source: str
    reason: str | None = None
    trial: bool = False
    fell_back_from: dict[str, object] | None = None

    def describe(self) -> dict[str, object]:
        """``{name, version, sha256}`` for state messages."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


class ModelStore:
    """Content-addressed models of one pipeline with atomic current/previous pointers.

    Args:
        directory: ``state_dir/models/<pipeline>``.
        configured_path: the model named in the config (version 0).
        configured_labels: its labels file from the config.
        keys: the trusted public keys; every stored manifest's signature is re-verified
            against them before its model is served (None: not checked, for tools that only
            look at a store).
    """

    def __init__(self, directory: str | Path, configured_path: str | Path | None = None,
                 configured_labels: str | Path | None = None,
                 keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self.dir = Path(directory)
        self.keys = dict(keys) if keys is not None else None
        self.staging = self.dir / "staging"
        self.staging.mkdir(parents=True, exist_ok=True)
        self.configured_path = Path(configured_path) if configured_path else None
        self.configured_labels = Path(configured_labels) if configured_labels else None
        self.last_resolved: ActiveModel | None = None

    # -- paths ---------------------------------------------------------------------------
    def model_path(self, sha: str) -> Path:
        """Where the model with this sha256 lives once installed."""
        return self.dir / f"{sha}.tflite"

    def labels_path(self, sha: str) -> Path:
        """Where its labels live."""
        return self.dir / f"{sha}.labels.txt"

    def manifest_path(self, sha: str) -> Path:
        """Where its manifest lives."""
        return self.dir / f"{sha}.manifest.json"

    def part_path(self, sha: str) -> Path:
        """The partial download of this sha256 (resumed across attempts and restarts)."""
        return self.staging / f"{sha}.part"

    def staged_labels_path(self, sha: str) -> Path:
        """The labels of a staged model, for validation before install."""
        return self.staging / f"{sha}.labels.txt"

    # -- pointers ------------------------------------------------------------------------
    def read_pointer(self, which: str) -> Pointer | None:
        """``current`` or ``previous``; None when absent or unreadable."""
        try:
            text = (self.dir / which).read_text().strip()
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        m = _POINTER_RE.fullmatch(text)
        if m is None:
            logger.warning("ignoring malformed %s pointer in %s", which, self.dir)
            return None
        return Pointer(m.group(1), bool(m.group(2)))

    def _write_pointer(self, which: str, pointer: Pointer | None) -> None:
        path = self.dir / which
        if pointer is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fsync_dir(self.dir)
            return
        write_atomic(path, f"{pointer.target}{' trial' if pointer.trial else ''}\n".encode())

    # -- install and activate ------------------------------------------------------------
    def install(self, staged: Path, manifest: Manifest,
                target_files: Mapping[str, Path] | None = None) -> Path:
        """Move a verified staged model (and its verified per-target files, by target name)
        into the store with its labels and manifest.

        The files must already match the manifest's sha256s (the updater checks them first).

        Returns:
            the installed model's path.
        """
        for name, staged_file in (target_files or {}).items():
            dest = self.model_path(manifest.targets[name].sha256)
            if staged_file != dest:
                with open(staged_file, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(staged_file, dest)
        sha = manifest.sha256
        if manifest.labels is not None:
            write_atomic(self.labels_path(sha), manifest.labels.encode())
        final = self.model_path(sha)
        if staged != final:
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, final)
        write_atomic(self.manifest_path(sha), manifest.to_json().encode())
        self.staged_labels_path(sha).unlink(missing_ok=True)
        return final

    def activate(self, sha: str, *, trial: bool = True) -> None:
        """Make ``sha`` current (on trial) and the old current previous."""
        cur = self.read_pointer("current")
        old = cur.target if cur is not None else CONFIGURED
        if old != sha:
            # previous first: a crash in between leaves current == previous, both valid.
            self._write_pointer("previous", Pointer(old))
        self._write_pointer("current", Pointer(sha, trial))

    def confirm(self) -> None:
        """The current model passed its watch: clear its trial flag."""
        cur = self.read_pointer("current")
        if cur is not None and cur.trial:
            self._write_pointer("current", Pointer(cur.target))

    def rollback(self) -> str | None:
        """Make previous current again and forget previous.

        Returns:
            the target rolled back to, or None when there is no previous model.
        """
        prev = self.read_pointer("previous")
        if prev is None:
            return None
        self._write_pointer("current", Pointer(prev.target))
        self._write_pointer("previous", None)
        return prev.target

    # -- resolve -------------------------------------------------------------------------
    def check(self, sha: str) -> Manifest:
        """Re-verify an installed model: manifest present, size and sha256 match.

        Raises:
            UpdateError: what is missing or does not match.
        """
        try:
            manifest = parse_manifest(self.manifest_path(sha).read_bytes())
        except FileNotFoundError as exc:
            raise UpdateError(f"model {sha[:12]} has no stored manifest") from exc
        if manifest.sha256 != sha:
            raise UpdateError(f"stored manifest of {sha[:12]} names another model")
        if self.keys is not None:
            try:
                verify_manifest(manifest, self.keys)
            except UpdateError as exc:
                raise UpdateError(f"stored manifest of {sha[:12]} is not trusted: {exc}") \
                    from None
        path = self.model_path(sha)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise UpdateError(f"model file {path.name} is missing") from exc
        if size != manifest.size or sha256_file(path) != sha:
            raise UpdateError(f"model file {path.name} does not match its sha256")
        if manifest.labels is not None:
            lp = self.labels_path(sha)
            if not lp.exists() or lp.read_bytes() != manifest.labels.encode():
                write_atomic(lp, manifest.labels.encode())  # repairable: the manifest has them
        return manifest

    def resolve(self, target: str, source: str, reason: str | None = None,
                trial: bool = False) -> ActiveModel:
        """The installed model a pointer target names, re-verified (see :meth:`check`)."""
        if target == CONFIGURED:
            return self.configured(source, reason)
        manifest = self.check(target)
        return ActiveModel(self.model_path(target),
                           self.labels_path(target) if manifest.labels is not None else None,
                           manifest, manifest.name, manifest.version, target, source, reason,
                           trial)

    def configured(self, source: str = "configured", reason: str | None = None) -> ActiveModel:
        """The model from the config, as version 0."""
        if self.configured_path is None:
            raise UpdateError("no configured model path")
        path = self.configured_path
        sha = sha256_file(path) if path.exists() else ""
        return ActiveModel(path, self.configured_labels, None, path.stem, 0, sha, source, reason)

    def resolve_active(self, configured_path: str | Path | None = None,
                       configured_labels: str | Path | None = None) -> ActiveModel:
        """See :meth:`_resolve_active`; the result is also kept in ``last_resolved``."""
        self.last_resolved = self._resolve_active(configured_path, configured_labels)
        return self.last_resolved

    def _resolve_active(self, configured_path: str | Path | None,
                        configured_labels: str | Path | None) -> ActiveModel:
        """The model to serve at start: current, else previous, else the configured one.

        A current model on trial (the agent restarted during its watch) is not trusted. When
        the store falls back, the pointers are repaired so that ``current`` names what serves.
        Partial downloads stay in staging for resume; temporary files are removed.
        """
        if configured_path is not None:
            self.configured_path = Path(configured_path)
        if configured_labels is not None:
            self.configured_labels = Path(configured_labels)
        self.cleanup()
        cur = self.read_pointer("current")
        if cur is None:
            return self.configured()
        reason: str | None = None
        if cur.trial:
            reason = (f"restarted while model {cur.target[:12]} was on trial (watch not "
                      "finished): not trusted")
        else:
            try:
                return self.resolve(cur.target, "current", None)
            except UpdateError as exc:
                reason = f"current model invalid: {exc}"
        logger.warning("model store %s: %s; falling back to previous", self.dir, reason)
        bad = self.describe("current")
        prev = self.read_pointer("previous")
        if prev is not None and prev.target != cur.target:
            try:
                active = self.resolve(prev.target, "previous", reason)
            except UpdateError as exc:
                reason = f"{reason}; previous model invalid: {exc}"
            else:
                self._write_pointer("current", Pointer(prev.target))
                self._write_pointer("previous", None)
                return dataclasses.replace(active, fell_back_from=bad)
        logger.warning("model store %s: falling back to the configured model", self.dir)
        self._write_pointer("current", None)
        self._write_pointer("previous", None)
        return dataclasses.replace(self.configured("configured", reason), fell_back_from=bad)

    def describe(self, which: str) -> dict[str, object] | None:
        """``{name, version, sha256}`` of what a pointer names (None when absent)."""
        ptr = self.read_pointer(which)
        if ptr is None:
            return None
        if ptr.target == CONFIGURED:
            if self.configured_path is None:
                return {"name": CONFIGURED, "version": 0, "sha256": ""}
            return self.configured().describe()
        try:
            m = parse_manifest(self.manifest_path(ptr.target).read_bytes())
        except (OSError, UpdateError):
            return {"name": "unknown", "version": 0, "sha256": ptr.target}
        return m.describe()

    def floor(self) -> RollbackFloor:
        """The anti-rollback floor, starting (when its file is missing) at the highest version
        among the trusted models that current and previous name."""
        initial = 0
        for which in ("current", "previous"):
            ptr = self.read_pointer(which)
            if ptr is not None and ptr.target != CONFIGURED:
                with contextlib.suppress(UpdateError):
                    initial = max(initial, self.check(ptr.target).version)
        return RollbackFloor(self.dir / FLOOR_FILE, initial)

    # -- housekeeping --------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove temporary files left by a crash (partial downloads are kept for resume)."""
        for folder in (self.dir, self.staging):
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)

    def discard_parts(self, keep: str | None = None) -> None:
        """Delete partial downloads and staged labels, except those of sha256 ``keep``."""
        for p in self.staging.iterdir():
            if keep is None or not p.name.startswith(keep):
                p.unlink(missing_ok=True)

    def _target_shas(self, sha: str) -> set[str]:
        try:
            raw = json.loads(self.manifest_path(sha).read_text())
        except (OSError, ValueError):
            return set()
        targets = raw.get("targets") if isinstance(raw, dict) else None
        if not isinstance(targets, dict):
            return set()
        return {str(t.get("sha256")) for t in targets.values() if isinstance(t, dict)}

    def target_files(self, manifest: Manifest | None, names: Iterable[str]) -> dict[str, Path]:
        """The installed per-target files of ``manifest`` for the targets in ``names``."""
        if manifest is None:
            return {}
        out: dict[str, Path] = {}
        for name in names:
            tf = manifest.targets.get(name)
            if tf is not None and self.model_path(tf.sha256).is_file():
                out[name] = self.model_path(tf.sha256)
        return out

    def prune(self) -> list[Path]:
        """Delete installed models that neither current nor previous names.

        Returns:
            the files removed.
        """
        keep = {p.target for p in (self.read_pointer("current"), self.read_pointer("previous"))
                if p is not None}
        for sha in list(keep):  # and the per-target files their manifests name
            keep.update(self._target_shas(sha))
        removed: list[Path] = []
        for p in self.dir.iterdir():
            if not p.is_file():
                continue
            sha = p.name.split(".", 1)[0]
            if re.fullmatch(r"[0-9a-f]{64}", sha) and sha not in keep:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed
