"""What a pipeline's updater may do to the running pipeline: validate a candidate model in a
separate interpreter (on each execution target), swap it in between two frames, publish the
model state and reply. Handed to :class:`~edge_agent.updater.updater.ModelUpdater` as its
:class:`~edge_agent.updater.updater.UpdateHooks`, the same interface the updater's tests use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.bundle import ModelBundle, load_bundle, warm_up
from edge_agent.config import PipelineConfig, fixed_threads
from edge_agent.contract.payloads import ShadowState
from edge_agent.errors import EdgeAgentError, ModelError, UpdateError
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import messages
from edge_agent.runtime.interpreter import TfliteRuntime
from edge_agent.runtime.targets import TargetRuntime, same_tensors, target_specs
from edge_agent.shadow import ShadowGate, ShadowRunner, figures_of
from edge_agent.types import ModelRef, ModelSignature
from edge_agent.updater.store import ModelStore

if TYPE_CHECKING:
    from edge_agent.pipeline_set import PipelineSet
    from edge_agent.updater.manifest import Manifest

logger = logging.getLogger(__name__)


def raw_image_problem(bundle: ModelBundle, p: PipelineConfig) -> str | None:
    """Why this pipeline may not publish the raw outputs of this model, or None.

    A ``raw`` decoder publishes the model's first output as numbers. For a model whose input
    is an image, that output can be the picture itself (a pass-through model makes every
    result a thumbnail), so it needs ``privacy.allow_raw_image_outputs`` in the device's own
    config.
    """
    kind = getattr(bundle.decoder, "kind", None)
    if kind == "raw" and bundle.preprocessor is not None \
            and not p.privacy.allow_raw_image_outputs:
        return ("decoder raw on a model whose input is an image publishes its raw outputs, "
                "which can show the picture; it needs privacy.allow_raw_image_outputs: true "
                "(an explicit opt-in in the device's own config)")
    return None


class UpdateWiring:
    """What a pipeline's updater may do to the running pipeline."""

    def __init__(self, owner: PipelineSet, cfg: PipelineConfig, pipeline: Pipeline,
                 store: ModelStore | None = None) -> None:
        self.owner = owner
        self.cfg = cfg
        self.pipeline = pipeline
        self.store = store
        self._validated: tuple[Path, Path | None, ModelBundle] | None = None
        self.decoder: str | None = None  # the pipeline's decoder kind, fixed for updates
        self._shadow: ShadowRunner | None = None  # a candidate in shadow
        self._shadow_publish: Callable[[dict[str, Any], ShadowState, str | None],
                                       None] | None = None
        self.shadow_report_s = 5.0  # figures go out at most this often while shadowing

    def active(self) -> tuple[str, int, str]:
        ref = self.pipeline.bundle.ref
        return ref.name, ref.version, ref.sha256

    def targets(self) -> list[str]:
        """The pipeline's execution target names (a manifest's files for others are skipped)."""
        return [t.label for t in self.cfg.model.resolved_targets()]

    def _load(self, path: Path, labels_path: Path | None, manifest: Manifest | None,
              target_files: Mapping[str, Path] | None = None) -> ModelBundle:
        if target_files is None and self.store is not None and manifest is not None:
            target_files = self.store.target_files(manifest, self.targets())
        model = self.cfg.model
        if self.decoder is not None and model.decoder != self.decoder:
            model = model.model_copy(update={"decoder": self.decoder})
        return load_bundle(model, self.cfg.score_threshold, path=path,
                           labels_path=labels_path or self.cfg.model.labels,
                           version=int(getattr(manifest, "version", 0) or 0),
                           name=getattr(manifest, "name", None),
                           sha256=getattr(manifest, "sha256", None),
                           target_files=target_files,
                           busy_threads=self.owner.busy_threads(exclude=self.cfg.name))

    def validate(self, path: Path, labels_path: Path | None,
                 target_files: Mapping[str, Path] | None = None,
                 manifest: Manifest | None = None) -> None:
        """Load in a separate interpreter, check it fits, warm up on a recent real frame; each
        per-target file is also loaded and warmed up on its own target (a file that does not
        run there rejects the update).

        The validated bundle is kept for :meth:`swap`, so the model is not loaded twice
        (unless it has per-target files: those move into the store at install). ``manifest``
        names the candidate in the log (its name and version, not the staged
        ``<sha256>.part`` file at "v0").
        """
        self._drop_validated()
        signatures = {}
        for name, file in (target_files or {}).items():
            signatures[name] = self._validate_on_target(name, path, dict(target_files or {}))
            logger.info("pipeline %s: %s passed warm-up on target %s", self.cfg.name,
                        Path(file).name, name)
        try:
            bundle = self._load(path, labels_path, manifest, target_files or {})
        except (ModelError, EdgeAgentError) as exc:
            raise UpdateError(str(exc)) from None
        problem = raw_image_problem(bundle, self.cfg)
        if problem is not None:
            bundle.close()
            raise UpdateError(problem)
        want = bundle.runtime.signature
        if signatures:  # the reference is the top-level file, whatever target serves first

            main = TfliteRuntime(path, threads=1)
            want = main.signature
            main.close()
        for name, sig in signatures.items():
            if not (same_tensors(sig.inputs, want.inputs)
                    and same_tensors(sig.outputs, want.outputs)):
                bundle.close()
                raise UpdateError(f"the file for target {name} has other input/output tensors "
                                  "than the model")
        try:
            warm_up(bundle, self.pipeline.last_frame(),
                    self.owner.cfg.updates.max_latency_ms)
        except ModelError as exc:
            bundle.close()
            raise UpdateError(str(exc)) from None
        if target_files:
            bundle.close()
            return
        self._validated = (Path(path), labels_path, bundle)

    def _validate_on_target(self, name: str, path: Path, target_files: dict[str, Path]
                            ) -> ModelSignature:
        """Load ``target_files[name]`` on target ``name`` alone and warm it up."""
        m = self.cfg.model
        spec = next(s for s in target_specs(m, path=path, target_files=target_files)
                    if s.name == name)
        try:
            runtime = TargetRuntime([spec], threads=fixed_threads(m),
                                    invoke_timeout_s=m.invoke_timeout_s,
                                    load_timeout_s=m.load_timeout_s)
        except EdgeAgentError as exc:
            raise UpdateError(f"the file for target {name} does not run on it: {exc}") from None
        signature = runtime.signature
        runtime.close()
        return signature

    def _drop_validated(self) -> None:
        validated, self._validated = self._validated, None
        if validated is not None:
            validated[2].close()

    def swap(self, path: Path, labels_path: Path | None, manifest: Manifest | None) -> None:
        """Swap the new model in between two frames."""
        validated, self._validated = self._validated, None
        try:
            # the updater validates the staged file and swaps in the installed copy of the
            # same bytes (sha256 checked by the updater): reuse the validated interpreter
            same = validated is not None and (
                validated[0] == Path(path)
                or validated[2].ref.sha256 == getattr(manifest, "sha256", None))
            if validated is not None and same:
                bundle = validated[2]
                ref = ModelRef(getattr(manifest, "name", None) or bundle.ref.name,
                               int(getattr(manifest, "version", 0) or 0),
                               getattr(manifest, "sha256", None) or bundle.ref.sha256)
                bundle = replace(bundle, ref=ref, path=Path(path), labels_path=labels_path)
            else:
                if validated is not None:
                    validated[2].close()
                bundle = self._load(path, labels_path, manifest)
        except EdgeAgentError as exc:
            raise UpdateError(str(exc)) from None
        if not self.pipeline.swap(bundle):
            raise UpdateError("the pipeline did not take the new model within 30 s")
        self.owner.metrics.set_model_info(self.cfg.name, bundle.ref, bundle.runtime.info)

    # -- shadow evaluation ----------------------------------------------------------------
    def shadow(self, path: Path, labels_path: Path | None, manifest: Manifest, *,
               gate: ShadowGate | None = None,
               on_verdict: Callable[[str, str | None], None] | None = None, every: int = 5,
               when_idle: bool = False,
               checkpoint: Callable[[dict[str, Any]], None] | None = None,
               resume: Mapping[str, Any] | None = None) -> None:
        """Run the validated candidate beside the active model (its own interpreter, loaded
        on the shadow's own low-priority thread, on sampled frames) and publish its figures
        on ``model/<pipeline>/shadow``; ``resume``: totals saved before a restart."""
        self.stop_shadow("stopped", "replaced by another shadow candidate")
        # loaded again on the shadow thread: the interpreter's worker threads inherit its
        # priority (the validating thread's is the normal one)
        self._drop_validated()
        about = manifest.describe()
        gate_raw = manifest.raw.get("shadow")

        def send_figures(figures: dict[str, Any], state: ShadowState = "shadowing",
                         reason: str | None = None) -> None:
            self._send_shadow(about, gate_raw, figures, state, reason)

        try:
            runner = ShadowRunner(self.cfg.name, lambda: self._load(path, labels_path,
                                                                    manifest, {}),
                                  self.pipeline.bundle, every=every, when_idle=when_idle,
                                  gate=gate, on_figures=send_figures, on_verdict=on_verdict,
                                  report_s=self.shadow_report_s, on_checkpoint=checkpoint,
                                  resume=resume)
        except ValueError as exc:  # unusable saved totals
            raise UpdateError(str(exc)) from None
        runner.start()  # raises UpdateError when the candidate does not load
        self._shadow_publish = send_figures
        self._shadow = runner
        send_figures(runner.figures())
        self.pipeline.shadow = runner
        logger.info("pipeline %s: shadowing %s v%d on every %s frame%s (%s)", self.cfg.name,
                    manifest.name, manifest.version, f"{every}th" if every > 1 else "",
                    " when idle" if when_idle else "", runner.priority)

    def _send_shadow(self, about: Mapping[str, Any], gate_raw: Mapping[str, Any] | None,
                     figures: dict[str, Any],
                     state: ShadowState, reason: str | None) -> None:
        o = self.owner
        o.guard.send(messages.shadow(o.seal, device=o.cfg.device_id, pipeline=self.cfg.name,
                                     state=state, candidate=about,
                                     active=self.pipeline.bundle.ref, figures=figures,
                                     gate=gate_raw, reason=reason))

    def report_shadow(self, manifest: Manifest, state: ShadowState, reason: str | None,
                      saved: Mapping[str, Any], *, every: int = 5,
                      when_idle: bool = False) -> None:
        """Publish the final message of a shadow without a runner (it could not resume after
        a restart), with the figures of its saved totals."""
        try:
            figures = figures_of(saved, every, when_idle)
        except ValueError:
            figures = figures_of({}, every, when_idle)
        self._send_shadow(manifest.describe(), manifest.raw.get("shadow"), figures, state,
                          reason)

    def stop_shadow(self, state: ShadowState, reason: str | None) -> None:
        """Stop the shadow candidate (if any) and publish its final figures as ``state``."""
        runner, self._shadow = self._shadow, None
        if runner is None:
            return
        self.pipeline.shadow = None
        runner.on_figures = None
        runner.on_verdict = None
        runner.stop()
        if self._shadow_publish is not None:
            try:
                self._shadow_publish(runner.figures(), state, reason)
            except Exception as exc:  # a refused publish must not block a promotion
                logger.warning("pipeline %s: final shadow figures not published: %s",
                               self.cfg.name, exc)

    def publish_state(self, payload: dict[str, Any]) -> None:
        self.owner.on_state(payload)

    def reply(self, request_id: str | None, ok: bool, error: str | None) -> None:
        if self.owner.dispatcher is not None:
            self.owner.dispatcher.reply(request_id, ok, error)


__all__ = ["UpdateWiring"]
