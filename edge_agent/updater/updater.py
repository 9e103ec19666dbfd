"""The update state machine of one pipeline: fetch, verify, validate, store, swap, watch.

States published (retained, on ``P/D/model/<pipeline>/state``): ``downloading`` (with
progress), ``verifying``, ``validating``, ``active``, ``rejected`` (with reason) and
``rolled_back`` (with reason). Every refusal ends ``rejected`` and the model that was serving
keeps serving. The agent hands in small callables (:class:`UpdateHooks`); this module never
touches a runtime, a decoder or MQTT itself.

One update runs at a time, on the updater's own worker thread; a second command while one
is running (or while a new model is being watched) is answered "busy".

Refused before anything is fetched: updates disabled in the config (``updates.enabled:
false``); a manifest that does not verify, is signed for another target (pipeline, device,
group, model name or decoder kind: :func:`~edge_agent.updater.manifest.check_destination`), or is
not above the anti-rollback floor (:mod:`edge_agent.updater.floor`); a ``url`` in the command
that the device's own config does not allow (``updates.url_override``): by default the url
comes only from the signed manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.config import UpdatesConfig
from edge_agent.contract.payloads import ShadowState
from edge_agent.digest import sha256_file
from edge_agent.errors import EdgeAgentError, UpdateError
from edge_agent.shadow import ShadowGate
from edge_agent.signing import load_public_keys
from edge_agent.updater.fetch import fetch, write_inline
from edge_agent.updater.manifest import (
    Destination,
    Manifest,
    check_destination,
    parse_manifest,
    verify_manifest,
)
from edge_agent.updater.shadow_record import ShadowRecord
from edge_agent.updater.store import ActiveModel, ModelStore
from edge_agent.updater.watch import ModelWatch

logger = logging.getLogger(__name__)

MIN_DOWNLOAD_RATE = 16 * 1024  # bytes/s: a slower download is cut off (and resumed next time)


@dataclass(frozen=True)
class UpdateHooks:
    """What the agent provides to one pipeline's updater.

    Attributes:
        active: ``() -> (name, version, sha256)`` of the model serving now.
        validate: ``(model_path, labels_path | None, *, manifest, target_files=...) ->
            None``: load the model (the staged ``<sha256>.part`` file; ``manifest`` names it
            in the log) in a separate interpreter, check it fits the pipeline's decoder, warm
            it up on a recent real frame (finite outputs), check ``max_latency_ms``; raise
            UpdateError (or ModelError) with the reason. With per-target files it is called
            with ``target_files={name: path}`` too, and must validate each file on its own
            target.
        swap: ``(model_path, labels_path | None, manifest | None) -> None``: make the
            pipeline use this model from the next frame on (between two frames); manifest
            None means the configured model (version 0). Raise on failure.
        publish_state: publish the retained state message (a dict).
        reply: ``(request_id, ok, error | None)``: the reply on ``P/D/cmd/reply``.
        targets: ``() -> names`` of the pipeline's execution targets: only their files of a
            manifest's ``targets`` are downloaded (default: none).
    """

    active: Callable[[], tuple[str, int, str]]
    validate: Callable[..., None]
    swap: Callable[[Path, Path | None, Manifest | None], None]
    publish_state: Callable[[dict[str, Any]], None]
    reply: Callable[[str, bool, str | None], None]
    targets: Callable[[], Sequence[str]] | None = None
    shadow: Callable[..., None] | None = None
    """``(model_path, labels_path | None, manifest, *, gate, on_verdict) -> None``: run this
    validated candidate in shadow of the active model (replacing any earlier one) and publish
    its agreement figures; ``on_verdict(verdict, reason)`` when the manifest's gate is
    decided. None: the agent has no shadow evaluation."""
    stop_shadow: Callable[[ShadowState, str | None], None] | None = None
    """``(state, reason) -> None``: stop the shadow candidate and publish its final figures
    with ``state`` (``promoted``, ``rejected`` or ``stopped``)."""
    report_shadow: Callable[..., None] | None = None
    """``(manifest, state, reason, saved, *, every, when_idle) -> None``: publish the final
    message of a shadow that has no runner (one that could not resume after a restart), with
    the figures of its saved totals ``saved``."""


class ModelUpdater:
    """Signed model updates for one pipeline.

    Args:
        pipeline: the pipeline name.
        config: the ``updates`` config section.
        store: this pipeline's :class:`ModelStore`.
        keys: trusted public keys by key_id (``signing.load_public_keys``).
        hooks: the agent's callables.
        target: what a manifest must be signed for (default: just this pipeline's name).
    """

    def __init__(self, pipeline: str, config: UpdatesConfig, store: ModelStore,
                 keys: Mapping[str, Ed25519PublicKey] | UpdateHooks | None = None,
                 hooks: UpdateHooks | None = None, target: Destination | None = None) -> None:
        if hooks is None and isinstance(keys, UpdateHooks):
            keys, hooks = None, keys  # ModelUpdater(pipeline, config, store, hooks)
        if hooks is None or isinstance(keys, UpdateHooks):
            raise TypeError("ModelUpdater needs hooks (an UpdateHooks)")
        self.pipeline = pipeline
        self.config = config
        self.store = store
        self.keys = dict(keys) if keys is not None else load_public_keys(config.public_keys)
        self.hooks = hooks
        self.target = target or Destination(pipeline, "")
        self.floor = store.floor()
        self._last_state: dict[str, Any] | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._busy = False
        self._released = True
        self._watch: ModelWatch | None = None
        self._job: str | None = None
        self._stop = threading.Event()
        # set by stop() and by a rollback asked for during an update: a download ends at the
        # next chunk, and the rollback runs as soon as the update is over
        self._cancel = threading.Event()
        self._pending_rollback: str | None = None
        self._thread: threading.Thread | None = None
        # the candidate in shadow: (manifest, model path, labels path, downgrade)
        self._shadow: tuple[Manifest, Path, Path | None, bool] | None = None
        # its record on disk (the shadow resumes after a restart); the sha256 whose running
        # totals are saved, kept through stop() so the last totals are saved too
        self._record = ShadowRecord(store.dir / "shadow")
        self._persist_sha: str | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, initial: ActiveModel | None = None) -> None:
        """Start the worker and publish the start-up state (``rolled_back`` when the store
        fell back at start, else ``active``).

        Args:
            initial: what ``store.resolve_active`` returned (default: its last result).
        """
        if self._thread is not None:
            return
        self._stop.clear()
        initial = initial or self.store.last_resolved
        self._thread = threading.Thread(target=self._run, name=f"updater-{self.pipeline}",
                                        daemon=True)
        # the start-up state goes out before the worker may take a queued command (one the
        # broker redelivered at connect), so no "downloading" precedes it
        if initial is not None and initial.reason:
            self._publish("rolled_back", initial.fell_back_from, initial.reason)
        else:
            self._publish("active", None, None)
        self._queue_resume()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker (a download is cancelled between chunks) and join it."""
        self._stop.set()
        self._cancel.set()
        with self._lock:
            if self._watch is not None:
                self._watch.wake.set()
            shadowing, self._shadow = self._shadow is not None, None
        if shadowing and self.hooks.stop_shadow is not None:
            # the record stays (the runner saves its last totals): the shadow resumes when
            # the agent starts again
            self.hooks.stop_shadow("stopped", "the agent stopped; the shadow resumes when "
                                   "it starts again")
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("updater %s did not stop within %.1f s", self.pipeline, timeout)
            self._thread = None

    @property
    def busy(self) -> bool:
        """Whether an update, rollback or watch is in progress."""
        with self._lock:
            return self._busy

    # -- entry points (any thread) -------------------------------------------------------
    def handle_update(self, command: Mapping[str, Any], via_group: str | None = None) -> bool:
        """Queue an update command ``{request_id, pipeline, manifest, url?, data?}``.

        Args:
            command: the command's payload.
            via_group: the fleet group whose topic it arrived on (None: the device's own).

        Returns:
            True when accepted; False when busy (then "busy" has been replied).
        """
        rid = str(command.get("request_id", ""))
        if not self._claim(rid):
            return False
        self._queue.put(("update", (dict(command), via_group)))
        return True

    def handle_shadow(self, command: Mapping[str, Any], via_group: str | None = None) -> bool:
        """Queue a shadow command ``{request_id, pipeline, manifest, url?, data?}``: the
        candidate is fetched, verified and validated exactly like an update, kept apart from
        the active model (``<store>/shadow/``) and run beside it on sampled frames.

        Returns:
            True when accepted; False when busy (then "busy" has been replied).
        """
        if self.hooks.shadow is None:
            self.hooks.reply(str(command.get("request_id", "")), False,
                             "shadow evaluation is not available in this agent")
            return False
        rid = str(command.get("request_id", ""))
        if not self._claim(rid):
            return False
        self._queue.put(("shadow", (dict(command), via_group)))
        return True

    def promote(self, request_id: str, sha256: str | None = None) -> bool:
        """Make the shadow candidate active through the normal install, swap and watch.

        Args:
            request_id: the signed command's id.
            sha256: when given, the candidate meant: refused when the shadow is another one.
        """
        if not self._claim(request_id):
            return False
        self._queue.put(("promote", (request_id, sha256, None)))
        return True

    def shadow_candidate(self) -> dict[str, Any] | None:
        """``{name, version, sha256}`` of the candidate in shadow, or None."""
        with self._lock:
            return None if self._shadow is None else self._shadow[0].describe()

    def rollback(self, request_id: str, sha256: str | None = None) -> bool:
        """Roll back to the previous model (manual). During a watch it ends the watch.

        A rollback goes to exactly one older model, ``previous``, once (previous is cleared
        by it); the anti-rollback floor stays, so no older manifest becomes installable.

        Args:
            request_id: the signed command's id.
            sha256: when given, the model the operator means to go back to: refused when
                ``previous`` is another one.
        """
        if sha256 is not None:
            prev = self.store.read_pointer("previous")
            target = None if prev is None else (
                self.store.configured().sha256 if prev.target == "configured" else prev.target)
            if target != sha256:
                why = (f"rollback refused: the previous model is "
                       f"{(target or 'none')[:12]}, not {sha256[:12]}")
                logger.warning("pipeline %s: %s", self.pipeline, why)
                self.hooks.reply(request_id, False, why)
                return False
        with self._lock:
            if self._watch is not None:
                self._watch.manual = request_id
                self._watch.wake.set()
                return True
            if self._busy and self._job == "update" and self._pending_rollback is None:
                # a signed rollback outranks an update in progress (e.g. a download a server
                # trickles): cancel it and roll back right after
                self._pending_rollback = request_id
                self._cancel.set()
                logger.warning("pipeline %s: rollback %s cancels the update in progress",
                               self.pipeline, request_id)
                return True
        if not self._claim(request_id):
            return False
        self._queue.put(("rollback", request_id))
        return True

    def record_inference(self, ok: bool, finite: bool = True, sha256: str | None = None) -> None:
        """Count one inference of the watched model (cheap; called by the pipeline thread).

        Args:
            ok: the invoke and decode succeeded.
            finite: every output value was finite.
            sha256: the model that ran; other models' inferences are ignored.
        """
        with self._lock:
            w = self._watch
            if w is None or (sha256 is not None and sha256 != w.sha256):
                return
            w.record(ok, finite)

    def _claim(self, request_id: str) -> bool:
        with self._lock:
            if self._busy or self._stop.is_set():
                what = "watching a new model" if self._watch is not None else "busy"
                reason = f"busy: pipeline {self.pipeline} is {what}; retry later"
                claimed = False
            else:
                self._busy = claimed = True
        if not claimed:
            self.hooks.reply(request_id, False, reason)
        return claimed

    # -- worker --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, arg = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                self._released = False  # this job's claim is still held
                self._job = kind
                if not self._stop.is_set():
                    self._cancel.clear()
            try:
                if kind == "update":
                    self._update(*arg)
                elif kind == "shadow":
                    self._start_shadow(*arg)
                elif kind == "promote":
                    self._promote(*arg)
                elif kind == "shadow_reject":
                    self._reject_shadow(*arg)
                elif kind == "shadow_resume":
                    self._resume_shadow(arg)
                else:
                    self._manual_rollback(arg)
            except Exception:  # worker boundary: keep the updater alive
                logger.exception("updater %s: unexpected error", self.pipeline)
            finally:
                self._release()
            self._run_pending_rollback()

    def _run_pending_rollback(self) -> None:
        """The rollback asked for while an update ran (it cancelled the update)."""
        with self._lock:
            rid, self._pending_rollback = self._pending_rollback, None
        if rid is None or self._stop.is_set():
            return
        if not self._claim(rid):
            return
        with self._lock:
            self._released = False
            self._job = "rollback"
        try:
            self._manual_rollback(rid)
        except Exception:  # worker boundary
            logger.exception("updater %s: unexpected error", self.pipeline)
        finally:
            self._release()

    def _release(self) -> None:
        """Give up the current job's claim exactly once (a later claim is never cleared)."""
        with self._lock:
            self._watch = None
            if not self._released:
                self._released = True
                self._busy = False

    def _state(self, state: str, about: Mapping[str, Any] | None, reason: str | None,
               progress: float | None = None) -> dict[str, Any]:
        """The state message as keyword arguments of ``privacy.messages.model_state`` (the
        agent adds ``device``)."""
        name, version, sha = self.hooks.active()
        about = dict(about) if about else {"name": name, "version": version, "sha256": sha}
        msg: dict[str, Any] = {"pipeline": self.pipeline, "state": state,
                               "name": about["name"], "version": about["version"],
                               "sha256": about["sha256"], "reason": reason,
                               "active": {"name": name, "version": version, "sha256": sha},
                               "previous": self.store.describe("previous")}
        if progress is not None:
            msg["progress"] = progress
        return msg

    def _publish(self, state: str, about: Mapping[str, Any] | None, reason: str | None,
                 progress: float | None = None) -> None:
        msg = self._state(state, about, reason, progress)
        with self._lock:
            self._last_state = msg
        try:
            self.hooks.publish_state(msg)
        except Exception as exc:  # a refused publish must not break the state machine
            logger.warning("pipeline %s: publishing model state %s failed: %s", self.pipeline,
                           state, exc)

    def last_state(self) -> dict[str, Any] | None:
        """The latest model state message's payload (None before the first)."""
        with self._lock:
            return None if self._last_state is None else dict(self._last_state)

    def publish_current(self) -> None:
        """Publish the latest state message again (at start-up and after a reconnect)."""
        with self._lock:
            msg = self._last_state
        if msg is None:
            # the broker can connect before start(): report the store's start-up fallback
            # here too, not a plain "active" that start() then contradicts
            initial = self.store.last_resolved
            if initial is not None and initial.reason:
                self._publish("rolled_back", initial.fell_back_from, initial.reason)
            else:
                self._publish("active", None, None)
            return
        try:
            self.hooks.publish_state(dict(msg))
        except Exception as exc:
            logger.warning("pipeline %s: re-publishing model state failed: %s", self.pipeline,
                           exc)

    def _update(self, command: dict[str, Any], via_group: str | None = None) -> None:
        rid = str(command.get("request_id", ""))
        about: dict[str, Any] | None = None
        t0 = time.monotonic()
        downloaded = False
        try:
            manifest, downgrade = self._check_manifest(command, via_group)
            about = manifest.describe()
            staged = self._obtain(command, manifest)
            downloaded = True
            targets = self._obtain_targets(command, manifest)
            self._publish("verifying", about, None)
            self._verify_bytes(staged, manifest.sha256, manifest.size, "the model")
            for name, path in targets.items():
                tf = manifest.targets[name]
                self._verify_bytes(path, tf.sha256, tf.size, f"the file for target {name}")
            labels = None
            if manifest.labels is not None:
                labels = self.store.staged_labels_path(manifest.sha256)
                labels.write_text(manifest.labels)
            self._publish("validating", about, None)
            self._validate(staged, labels, targets, manifest)
        except UpdateError as exc:
            self._reject(rid, about, exc, downloaded)
            return
        self._activate(rid, manifest, staged, targets, downgrade, t0)

    def _reject(self, rid: str, about: Mapping[str, Any] | None, exc: UpdateError,
                downloaded: bool) -> None:
        logger.warning("update %s of pipeline %s rejected: %s", rid, self.pipeline, exc)
        if downloaded:
            # complete but refused bytes are no use; an interrupted download is kept
            self.store.discard_parts()
        self._publish("rejected", about, str(exc))
        self._release()  # free before the reply: the operator may send the next one
        self.hooks.reply(rid, False, str(exc))

    def _activate(self, rid: str, manifest: Manifest, staged: Path,
                  targets: Mapping[str, Path], downgrade: bool, t0: float) -> None:
        """Install a verified, validated model, swap it in and watch it (update, promote)."""
        about = manifest.describe()
        try:
            self._install_and_swap(staged, manifest, targets, downgrade)
            watch = ModelWatch(manifest.sha256, about, rid, self.config)
            with self._lock:
                self._watch = watch  # the new model serves from here on
                if watch.enabled and self._pending_rollback is not None:  # asked for meanwhile
                    watch.manual, self._pending_rollback = self._pending_rollback, None
                    watch.wake.set()
        except UpdateError as exc:
            self._reject(rid, about, exc, True)
            return
        elapsed = time.monotonic() - t0
        logger.info("pipeline %s: model %s v%d active after %.2f s", self.pipeline,
                    manifest.name, manifest.version, elapsed)
        self._publish("active", about, None)
        if not watch.enabled:
            self.store.confirm()
            self._release()  # nothing to watch: free before the reply
            self.hooks.reply(rid, True, None)
            self.store.prune()
            return
        self.hooks.reply(rid, True, None)
        self.store.prune()
        self._watch_model(watch)

    # -- shadow evaluation --------------------------------------------------------------
    def _start_shadow(self, command: dict[str, Any], via_group: str | None = None) -> None:
        rid = str(command.get("request_id", ""))
        about: dict[str, Any] | None = None
        downloaded = False
        try:
            manifest, downgrade = self._check_manifest(command, via_group)
            about = manifest.describe()
            raw_gate = manifest.raw.get("shadow")
            gate = None if raw_gate is None else ShadowGate.parse(raw_gate)
            mine = self._my_targets(manifest)
            if mine:
                raise UpdateError(f"the manifest has files for this device's targets "
                                  f"({', '.join(mine)}); shadowing runs only a model's main "
                                  "file, so it is not shadowed (send it with model push)")
            staged = self._obtain(command, manifest)
            downloaded = True
            self._publish("verifying", about, None)
            self._verify_bytes(staged, manifest.sha256, manifest.size, "the model")
            labels = None
            if manifest.labels is not None:
                labels = self.store.staged_labels_path(manifest.sha256)
                labels.write_text(manifest.labels)
            self._publish("validating", about, None)
            self._validate(staged, labels, None, manifest)
            apart = self.store.dir / "shadow"
            apart.mkdir(parents=True, exist_ok=True)
            for old in apart.iterdir():
                old.unlink(missing_ok=True)
            path = apart / f"{manifest.sha256}.tflite"
            os.replace(staged, path)
            if labels is not None:
                os.replace(labels, apart / f"{manifest.sha256}.labels")
                labels = apart / f"{manifest.sha256}.labels"
            assert self.hooks.shadow is not None
            every = int(command.get("every") or 5)
            when_idle = bool(command.get("when_idle", False))
            _n, _v, active_sha = self.hooks.active()
            self._record.save({"sha256": manifest.sha256, "manifest": dict(manifest.raw),
                               "every": every, "when_idle": when_idle,
                               "downgrade": downgrade, "via_group": via_group,
                               "active_sha256": active_sha, "state": None})
            with self._lock:
                self._shadow = (manifest, path, labels, downgrade)
                self._persist_sha = manifest.sha256
            self.hooks.shadow(path, labels, manifest, gate=gate,
                              on_verdict=self._verdict_callback(manifest.sha256),
                              every=every, when_idle=when_idle,
                              checkpoint=self._checkpoint_callback(manifest.sha256),
                              resume=None)
        except (UpdateError, EdgeAgentError) as exc:
            with self._lock:
                self._shadow = None
                self._persist_sha = None
            self._record.clear()
            self._reject(rid, about, UpdateError(f"shadow: {exc}"), downloaded)
            return
        logger.info("pipeline %s: model %s v%d in shadow (gate: %s)", self.pipeline,
                    manifest.name, manifest.version, raw_gate)
        self._publish("active", None, None)  # verified and validated; the active model serves
        self._release()
        self.hooks.reply(rid, True, None)

    def _queue_promote(self, sha: str, why: str) -> None:
        """The gate held (shadow thread): promote as soon as the worker is free."""
        threading.Thread(target=self._claim_and_queue, args=("promote", (None, sha, why)),
                         name=f"shadow-gate-{self.pipeline}", daemon=True).start()

    def _queue_reject_shadow(self, sha: str, reason: str | None) -> None:
        threading.Thread(target=self._claim_and_queue,
                         args=("shadow_reject", (sha, reason)),
                         name=f"shadow-gate-{self.pipeline}", daemon=True).start()

    def _claim_and_queue(self, kind: str, arg: Any) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._busy:
                    self._busy = True
                    break
            time.sleep(0.2)
        else:
            return
        self._queue.put((kind, arg))

    def _verdict_callback(self, sha: str) -> Callable[[str, str | None], None]:
        def on_verdict(verdict: str, reason: str | None) -> None:
            if verdict == "pass":
                self._queue_promote(sha, "the shadow gate held")
            else:
                self._queue_reject_shadow(sha, reason)
        return on_verdict

    def _checkpoint_callback(self, sha: str) -> Callable[[dict[str, Any]], None]:
        def checkpoint(state: dict[str, Any]) -> None:
            with self._lock:
                current = self._persist_sha
            if current == sha:
                self._record.save_state(sha, state)
        return checkpoint

    def _queue_resume(self) -> None:
        """A shadow that ran when the agent stopped resumes (on the worker, before any
        command): queued here, checked again by :meth:`_resume_shadow`."""
        if self.hooks.shadow is None:
            return
        try:
            record = self._record.load()
        except ValueError as exc:
            logger.error("pipeline %s: shadow not resumed: %s; record removed", self.pipeline,
                         exc)
            self._record.clear()
            return
        if record is None:
            return
        with self._lock:
            self._busy = True
        self._queue.put(("shadow_resume", record))

    def _resume_shadow(self, record: dict[str, Any]) -> None:
        """Run the recorded candidate again, after the same checks as when it was sent (the
        signature, the destination, the anti-rollback floor, the file's sha256), against the
        same active model; otherwise end it with an explicit ``stopped`` message."""
        from edge_agent.shadow import ShadowGate

        sha = str(record["sha256"])
        every, when_idle = int(record.get("every") or 5), bool(record.get("when_idle"))
        manifest: Manifest | None = None
        try:
            manifest = parse_manifest(record["manifest"])
            if not self.config.enabled:
                raise UpdateError("updates are disabled on this device (updates.enabled: false)")
            if manifest.sha256 != sha:
                raise UpdateError("the record's manifest is for another model")
            verify_manifest(manifest, self.keys)
            via = record.get("via_group")
            check_destination(manifest, dataclasses.replace(
                self.target, via_group=via if isinstance(via, str) else None))
            _n, _v, active_sha = self.hooks.active()
            if active_sha != record.get("active_sha256"):
                raise UpdateError("the active model changed while the agent was stopped")
            downgrade = self.floor.check(manifest, self.config.allow_downgrade)
            path = self._record.dir / f"{sha}.tflite"
            if not path.is_file() or sha256_file(path) != sha:
                raise UpdateError("the stored candidate file is missing or was changed")
            labels: Path | None = self._record.dir / f"{sha}.labels"
            if labels is not None and not labels.is_file():
                labels = None
            raw_gate = manifest.raw.get("shadow")
            gate = None if raw_gate is None else ShadowGate.parse(raw_gate)
            with self._lock:
                self._shadow = (manifest, path, labels, downgrade)
                self._persist_sha = sha
            assert self.hooks.shadow is not None
            self.hooks.shadow(path, labels, manifest, gate=gate,
                              on_verdict=self._verdict_callback(sha), every=every,
                              when_idle=when_idle, checkpoint=self._checkpoint_callback(sha),
                              resume=record.get("state"))
        except (UpdateError, EdgeAgentError, ValueError) as exc:
            with self._lock:
                self._shadow = None
                self._persist_sha = None
            reason = f"not resumed after the restart: {exc}"
            logger.warning("pipeline %s: shadow candidate %s %s", self.pipeline, sha[:12],
                           reason)
            self._record.clear()
            for leftover in (f"{sha}.tflite", f"{sha}.labels"):
                (self._record.dir / leftover).unlink(missing_ok=True)
            if manifest is not None and self.hooks.report_shadow is not None:
                try:
                    self.hooks.report_shadow(manifest, "stopped", reason,
                                             record.get("state") or {}, every=every,
                                             when_idle=when_idle)
                except Exception as pub_exc:  # the log above has it
                    logger.warning("pipeline %s: shadow end not published: %s",
                                   self.pipeline, pub_exc)
            return
        saved = (record.get("state") or {}).get("agreement") or {}
        logger.info("pipeline %s: shadow of %s v%d resumed (%s frames compared before the "
                    "restart)", self.pipeline, manifest.name, manifest.version,
                    saved.get("frames", 0))

    def _end_shadow(self, state: ShadowState, reason: str | None) -> None:
        with self._lock:
            self._shadow = None
            self._persist_sha = None
        if self.hooks.stop_shadow is not None:
            self.hooks.stop_shadow(state, reason)
        self._record.clear()

    def _stop_shadow_for_swap(self, sha: str | None) -> None:
        """Another model is about to serve: the figures against the old one end here."""
        with self._lock:
            current = self._shadow
        if current is not None and current[0].sha256 != sha:
            logger.info("pipeline %s: shadow of %s stopped: the active model changes",
                        self.pipeline, current[0].sha256[:12])
            self._end_shadow("stopped", "the active model changed")

    def _reject_shadow(self, sha: str, reason: str | None) -> None:
        with self._lock:
            current = self._shadow
        if current is None or current[0].sha256 != sha:
            return
        about = current[0].describe()
        logger.warning("pipeline %s: shadow candidate %s rejected: %s", self.pipeline,
                       sha[:12], reason)
        self._end_shadow("rejected", reason)
        current[1].unlink(missing_ok=True)
        self._publish("rejected", about, reason)

    def _promote(self, request_id: str | None, sha256: str | None, why: str | None) -> None:
        with self._lock:
            current = self._shadow
        rid = request_id or ""
        if current is None or (sha256 is not None and current[0].sha256 != sha256):
            error = ("no candidate in shadow" if current is None else
                     f"the candidate in shadow is {current[0].sha256[:12]}, not {sha256[:12]}"
                     if sha256 else "no candidate in shadow")
            if request_id is not None:
                self._release()
                self.hooks.reply(rid, False, f"promote refused: {error}")
            return
        manifest, path, _labels, downgrade = current
        logger.info("pipeline %s: promoting shadow candidate %s v%d (%s)", self.pipeline,
                    manifest.name, manifest.version,
                    why or f"request {request_id}")
        self._end_shadow("promoted", why or f"promoted by request {request_id}")
        if request_id is None:
            rid = f"shadow-gate-{manifest.sha256[:12]}"
        self._activate(rid, manifest, path, {}, downgrade, time.monotonic())

    def _check_manifest(self, command: Mapping[str, Any], via_group: str | None = None
                        ) -> tuple[Manifest, bool]:
        """The verified manifest and whether it is a signed downgrade (below the floor)."""
        if not self.config.enabled:
            raise UpdateError("updates are disabled on this device (updates.enabled: false)")
        if "manifest" not in command:
            raise UpdateError("command has no manifest")
        pipeline = command.get("pipeline")
        if pipeline is not None and pipeline != self.pipeline:
            raise UpdateError(f"command is for pipeline {pipeline!r}, not {self.pipeline!r}")
        manifest = parse_manifest(command["manifest"])
        mine = self._my_targets(manifest)
        size = manifest.size + sum(manifest.targets[n].size for n in mine)
        if size > self.config.max_size_bytes:
            raise UpdateError(f"model size {size} is over updates.max_size_bytes "
                              f"({self.config.max_size_bytes})")
        verify_manifest(manifest, self.keys)
        check_destination(manifest, dataclasses.replace(self.target, via_group=via_group))
        _name, version, sha = self.hooks.active()
        if manifest.sha256 == sha:
            raise UpdateError(f"model {sha[:12]} is already active")
        downgrade = self.floor.check(manifest, self.config.allow_downgrade)
        if downgrade:
            logger.info("pipeline %s: downgrade %d -> %d allowed by config and manifest "
                        "(floor %d)", self.pipeline, version, manifest.version,
                        self.floor.version)
        url = command.get("url")
        if url is not None and command.get("data") is None:
            check_url_override(str(url), self.config)
        urls = command.get("target_urls")
        if isinstance(urls, Mapping):
            for target_url in urls.values():
                check_url_override(str(target_url), self.config)
        return manifest, downgrade

    def _obtain(self, command: Mapping[str, Any], manifest: Manifest) -> Path:
        sha, total = manifest.sha256, manifest.size
        about = manifest.describe()
        installed = self.store.model_path(sha)
        if installed.exists() and sha256_file(installed) == sha:
            return installed  # e.g. going back to a model that is still in the store
        self.store.discard_parts(keep=sha)
        part = self.store.part_path(sha)
        last = [0.0]

        def progress(done: int, size: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.5 or done == size:
                last[0] = now
                self._publish("downloading", about, None,
                              progress=round(done / size, 4) if size else 0.0)

        progress(part.stat().st_size if part.exists() else 0, total)
        data = command.get("data")
        if data is not None:
            part.unlink(missing_ok=True)
            write_inline(data, part, total)
            progress(total, total)
            return part
        url = command.get("url") or manifest.url
        if not url:
            raise UpdateError("no url in the command or the manifest, and no inline data")
        overridden = command.get("url") is not None
        deadline = min(self.config.download_deadline_s,
                       self.config.fetch_timeout_s + total / MIN_DOWNLOAD_RATE)
        return fetch(str(url), part, total, timeout=self.config.fetch_timeout_s,
                     progress=progress, cancel=self._cancel, deadline_s=deadline,
                     allow_file=not overridden,
                     allow_redirect=(lambda u: _override_allows(u, self.config))
                     if overridden else None)

    def _my_targets(self, manifest: Manifest) -> list[str]:
        """The manifest's per-target files this device has a target for (the rest are not
        downloaded)."""
        names = self.hooks.targets
        have = list(names()) if names is not None else []
        mine = [n for n in have if n in manifest.targets]
        skipped = sorted(set(manifest.targets) - set(mine))
        if skipped:
            logger.info("pipeline %s: not downloading the files for targets %s (this device "
                        "has none of them)", self.pipeline, ", ".join(skipped))
        return mine

    def _obtain_targets(self, command: Mapping[str, Any], manifest: Manifest) -> dict[str, Path]:
        """Download (or take inline) the per-target files for this device's targets."""
        out: dict[str, Path] = {}
        inline = command.get("target_data") or {}
        urls = command.get("target_urls") or {}
        for name in self._my_targets(manifest):
            tf = manifest.targets[name]
            installed = self.store.model_path(tf.sha256)
            if installed.exists() and sha256_file(installed) == tf.sha256:
                out[name] = installed
                continue
            part = self.store.part_path(tf.sha256)
            if isinstance(inline, Mapping) and inline.get(name) is not None:
                part.unlink(missing_ok=True)
                write_inline(inline[name], part, tf.size)
            else:
                given = urls.get(name) if isinstance(urls, Mapping) else None
                url = given or tf.url
                if not url:
                    raise UpdateError(f"no url or inline data for the file of target {name}")
                fetch(str(url), part, tf.size, timeout=self.config.fetch_timeout_s,
                      cancel=self._cancel,
                      deadline_s=min(self.config.download_deadline_s,
                                     self.config.fetch_timeout_s + tf.size / MIN_DOWNLOAD_RATE),
                      allow_file=given is None,
                      allow_redirect=(lambda u: _override_allows(u, self.config))
                      if given is not None else None)
            out[name] = part
        return out

    def _verify_bytes(self, staged: Path, sha: str, size_wanted: int, what: str) -> None:
        size = staged.stat().st_size
        if size != size_wanted:
            if staged.parent == self.store.staging:
                staged.unlink(missing_ok=True)
            raise UpdateError(f"size mismatch of {what}: got {size} bytes, the manifest says "
                              f"{size_wanted}")
        digest = sha256_file(staged)
        if digest != sha:
            if staged.parent == self.store.staging:
                staged.unlink(missing_ok=True)
            raise UpdateError(f"sha256 mismatch of {what}: got {digest[:16]}..., the manifest "
                              f"says {sha[:16]}...")

    def _validate(self, staged: Path, labels: Path | None,
                  targets: Mapping[str, Path] | None = None,
                  manifest: Manifest | None = None) -> None:
        # the manifest names the candidate in the agent's log (not the staged <sha256>.part)
        kw: dict[str, Any] = {"manifest": manifest}
        if targets:
            kw["target_files"] = dict(targets)
        try:
            self.hooks.validate(staged, labels, **kw)
        except EdgeAgentError as exc:
            raise UpdateError(f"validation failed: {exc}") from exc
        except Exception as exc:  # an untrusted model can make a runtime raise anything
            raise UpdateError(f"validation failed: {type(exc).__name__}: {exc}") from exc

    def _install_and_swap(self, staged: Path, manifest: Manifest,
                          targets: Mapping[str, Path] | None = None,
                          downgrade: bool = False) -> Path:
        self._stop_shadow_for_swap(manifest.sha256)
        path = self.store.install(staged, manifest, targets)
        self.floor.record(manifest, downgrade)  # before current names it: never lowered
        watching = self.config.watch_inferences > 0 or self.config.watch_seconds > 0
        self.store.activate(manifest.sha256, trial=watching)
        labels = self.store.labels_path(manifest.sha256) if manifest.labels is not None else None
        try:
            self.hooks.swap(path, labels, manifest)
        except Exception as exc:
            self.store.rollback()
            raise UpdateError(f"swap failed: {exc}") from exc
        return path

    # -- watch and rollback --------------------------------------------------------------
    def _watch_model(self, w: ModelWatch) -> None:
        if not w.enabled:
            self.store.confirm()
            return
        while True:
            deadline = w.deadline
            w.wake.wait(0.5 if deadline is None
                        else max(0.0, min(0.5, deadline - time.monotonic())))
            w.wake.clear()
            with self._lock:
                manual, verdict, reason = w.manual, w.verdict(), w.reason()
                n, failures, failing = w.n, w.failures, w.failing_so_far()
            if manual is not None:
                self._rollback_to_previous(w.about, f"manual rollback (request {manual})", manual)
                return
            if verdict == "fail":
                self._rollback_to_previous(w.about, reason, None)
                return
            if verdict == "pass":
                self.store.confirm()
                logger.info("pipeline %s: model %s passed its watch (%d inferences, %d failed)",
                            self.pipeline, w.sha256[:12], n, failures)
                self._publish("active", w.about, None)
                return
            if self._stop.is_set():
                # A clean stop is not a crash: keep the model if it was doing fine so far,
                # else point back at the previous one for the next start (no swap: stopping).
                if failing:
                    self.store.rollback()
                else:
                    self.store.confirm()
                return

    def _manual_rollback(self, request_id: str) -> None:
        name, version, sha = self.hooks.active()
        self._rollback_to_previous({"name": name, "version": version, "sha256": sha},
                                   f"manual rollback (request {request_id})", request_id)

    def _rollback_to_previous(self, about: Mapping[str, Any], reason: str,
                              request_id: str | None) -> None:
        prev = self.store.read_pointer("previous")
        error: str | None = None
        if prev is None:
            error = "no previous model to roll back to"
        else:
            self._stop_shadow_for_swap(None)
            try:
                target = self.store.resolve(prev.target, "previous", reason)
                self.hooks.swap(target.path, target.labels_path, target.manifest)
            except Exception as exc:
                error = f"rollback failed: {exc}"
        if error is not None:
            logger.warning("pipeline %s: %s", self.pipeline, error)
            if request_id is not None:
                self.hooks.reply(request_id, False, error)
            return
        self.store.rollback()
        logger.warning("pipeline %s: rolled back model %s: %s", self.pipeline,
                       str(about.get("sha256", ""))[:12], reason)
        self._publish("rolled_back", about, reason)
        if request_id is not None:
            self.hooks.reply(request_id, True, None)


def _override_allows(url: str, config: UpdatesConfig) -> str | None:
    """Why ``url`` may not come from a command (None: allowed by ``updates.url_override``)."""
    allowed = config.url_override
    try:
        parsed = urllib.parse.urlsplit(url)
        host = (parsed.hostname or "").lower()
    except ValueError:
        return "the url does not parse"
    if parsed.scheme == "file":
        return "file: urls are never taken from a command"
    if not allowed.schemes or not allowed.hosts:
        return ("the device takes the url only from the signed manifest (its own config can "
                "allow others with updates.url_override.schemes and .hosts)")
    if parsed.scheme not in allowed.schemes:
        return f"scheme {parsed.scheme!r} is not in updates.url_override.schemes"
    if host not in {h.lower() for h in allowed.hosts}:
        return f"host {host!r} is not in updates.url_override.hosts"
    return None


def check_url_override(url: str, config: UpdatesConfig) -> None:
    """Refuse a command's ``url`` that the device's config does not allow.

    Raises:
        UpdateError: ``url override refused: <why>``.
    """
    why = _override_allows(url, config)
    if why is not None:
        raise UpdateError(f"url override refused: {why}")
