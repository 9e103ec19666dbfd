"""The running pipelines: how each is wired (model bundle, policy, gate, tracker, zones,
health, pipeline, updater), started, stopped and rebuilt on reload, and what they report.

The wiring layer, like ``agent.py`` (daemon lifecycle) and ``pipeline.py``: the only places
that connect stages. The updater's side of the wiring is in :mod:`edge_agent.update_wiring`,
the face detector for redaction in :mod:`edge_agent.face_detector`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_agent.bundle import load_bundle
from edge_agent.camera_health import CameraHealthMonitor
from edge_agent.config import AgentConfig, PipelineConfig
from edge_agent.energy import EnergyMeter, PowerReader
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.motion import MotionGate
from edge_agent.mqtt.commands import Command, CommandDispatcher, ReplyData, Subscribable
from edge_agent.mqtt.discovery import (
    AnnouncedTopics,
    discovery_configs,
    ha_came_online,
    ha_status_topic,
)
from edge_agent.pipeline import Pipeline
from edge_agent.privacy import messages
from edge_agent.privacy.hashing import load_salt
from edge_agent.privacy.policy import PrivacyPolicy
from edge_agent.runtime.targets import TargetRuntime
from edge_agent.runtime.threads_auto import TrialSlot, cpu_budget
from edge_agent.signing import load_public_keys
from edge_agent.sources.factory import create_source
from edge_agent.thermal import ThermalMonitor
from edge_agent.tracking import IouTracker
from edge_agent.types import Box
from edge_agent.update_wiring import UpdateWiring, raw_image_problem
from edge_agent.updater.manifest import Destination
from edge_agent.updater.store import ModelStore
from edge_agent.updater.updater import ModelUpdater, UpdateHooks
from edge_agent.view.render import render_frame
from edge_agent.view.tap import ViewTap
from edge_agent.zones import ZoneTracker

if TYPE_CHECKING:
    from edge_agent.metrics import Metrics
    from edge_agent.privacy.egress import EgressGuard
    from edge_agent.privacy.policy import PrivacyPolicy
    from edge_agent.privacy.seal import Seal
    from edge_agent.updater.updater import ModelUpdater
    from edge_agent.view.tap import ViewTap

logger = logging.getLogger(__name__)

class _Unit:
    """Everything one pipeline owns."""

    def __init__(self, cfg: PipelineConfig, pipeline: Pipeline, policy: PrivacyPolicy,
                 updater: ModelUpdater, tap: ViewTap | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.policy = policy
        self.updater = updater
        self.tap = tap

    def stop(self) -> None:
        """Stop the pipeline (and close its model: a delegate target's worker thread ends),
        its live-view tap and its updater."""
        self.pipeline.stop()
        self.pipeline.bundle.close()
        if self.tap is not None:
            self.tap.close()
        self.updater.stop()


class PipelineSet:
    """The running pipelines of the agent, built from config and rebuilt on reload."""

    def __init__(self, cfg: AgentConfig, seal: Seal, guard: EgressGuard, metrics: Metrics,
                 face_detector: Callable[[np.ndarray], list[Box]] | None,
                 on_state: Callable[[dict[str, Any]], None],
                 checked: dict[str, TargetRuntime] | None = None) -> None:
        """``checked``: runtimes the agent's start-up check loaded, by pipeline name; a
        pipeline pops its own and uses it when it is what it would load (else closes it)."""
        self.cfg = cfg
        self.seal = seal
        self.guard = guard
        self.metrics = metrics
        self.face_detector = face_detector
        self.on_state = on_state
        self.units: dict[str, _Unit] = {}
        # one look at the board for every pipeline (tests replace ``thermal.reader``)
        self.thermal = ThermalMonitor(cfg.thermal)
        # CPU time and board energy per result, between stats messages (tests: own reader)
        self.energy = EnergyMeter(PowerReader())
        self.energy.sample(0)  # the baseline: the first stats covers the time since start
        self._lock = threading.Lock()
        self.dispatcher: CommandDispatcher | None = None
        self.trial_slot = TrialSlot()  # ``threads: auto`` trials: one pipeline at a time

        self.salt = load_salt(cfg.state_dir)  # hashed fields stay stable across restarts
        for p in cfg.pipelines:
            mine = checked.pop(p.name, None) if checked else None
            try:
                self.units[p.name] = self._build(p, mine)
            except BaseException:
                if mine is not None:
                    mine.close()  # closing twice is harmless
                raise

    # ------------------------------------------------------------------ build

    def _build(self, p: PipelineConfig, checked: TargetRuntime | None = None) -> _Unit:
        keys = load_public_keys(self.cfg.updates.public_keys)
        store = ModelStore(self.cfg.state_dir / "models" / p.name, keys=keys)
        active = store.resolve_active(p.model.path)
        names = [t.label for t in p.model.resolved_targets()]
        if active.reason:
            logger.error("pipeline %s: not serving the stored model: %s; serving %s v%d",
                         p.name, active.reason, active.name, active.version)
        bundle = load_bundle(p.model, p.score_threshold, path=active.path,
                             labels_path=active.labels_path or p.model.labels,
                             version=active.version,
                             name=active.name or p.model.name or Path(p.model.path).stem,
                             sha256=active.sha256, busy_threads=self.busy_threads(p.name),
                             target_files=store.target_files(active.manifest, names),
                             loaded=checked)
        problem = raw_image_problem(bundle, p)
        if problem is not None:
            bundle.close()
            raise ConfigError(f"pipelines.{p.name}.model.decoder: {problem}")
        policy = PrivacyPolicy(p.privacy, p.name, self.cfg.device_id, self.seal,
                               self.face_detector, salt=self.salt)
        gate = MotionGate(p.motion) if p.motion.enabled else None
        tracker = IouTracker(p.tracking, p.name) if p.tracking.enabled else None
        zones = ZoneTracker(p.zones, p.name) if p.zones and tracker is not None else None
        health = (CameraHealthMonitor(p.camera_health, p.name) if p.camera_health.enabled
                  else None)
        pipeline = Pipeline(p, bundle, source_factory=create_source, policy=policy,
                            send=self.guard.send, gate=gate, tracker=tracker, zones=zones,
                            health=health,
                            observe=self.metrics.observe_stage,
                            thermal=self.thermal.factor if self.cfg.thermal.enabled else None,
                            trial_slot=self.trial_slot)
        wired = UpdateWiring(self, p, pipeline, store)
        # updates keep the decoder kind the pipeline runs: ``auto`` is resolved once, for the
        # configured model, and never re-inferred (a classifier cannot replace a detector)
        kind = getattr(bundle.decoder, "kind", None) or p.model.decoder
        wired.decoder = kind if kind != "auto" else None
        target = Destination(p.name, self.cfg.device_id, tuple(self.cfg.mqtt.groups),
                        name=p.model.name, decoder=wired.decoder)
        # the same interface the updater's tests hand in: the callables, not the object
        hooks = UpdateHooks(active=wired.active, validate=wired.validate, swap=wired.swap,
                            publish_state=wired.publish_state, reply=wired.reply,
                            targets=wired.targets, shadow=wired.shadow,
                            stop_shadow=wired.stop_shadow,
                            report_shadow=wired.report_shadow)
        updater = ModelUpdater(p.name, self.cfg.updates, store, keys, hooks, target=target)
        pipeline.on_inference = updater.record_inference
        self.metrics.set_model_info(p.name, bundle.ref, bundle.runtime.info)
        tap = None
        if self.cfg.view.enabled:
            tap = ViewTap(p.name, partial(render_frame, policy, p), self.cfg.view.max_fps)
            pipeline.view = tap
        return _Unit(p, pipeline, policy, updater, tap)

    # ------------------------------------------------------------------ lifecycle

    def start_all(self) -> None:
        """Start every pipeline and updater."""
        for unit in self.units.values():
            unit.updater.start()
            unit.pipeline.start()

    def stop_all(self) -> None:
        """Stop commands, then every pipeline (sources first) and updater."""
        if self.dispatcher is not None:
            self.dispatcher.stop(5.0)
        for unit in self.units.values():
            unit.pipeline.stop()
            unit.pipeline.bundle.close()  # ends a delegate target's worker thread
        for unit in self.units.values():
            if unit.tap is not None:
                unit.tap.close()
            unit.updater.stop()

    def apply(self, new: AgentConfig) -> list[str]:
        """Restart changed pipelines, stop removed ones, start added ones; the others, when
        anything changed, try their ``threads: auto`` counts again beside the new set."""
        changed: list[str] = []
        rebuilt: set[str] = set()
        new_names = {p.name for p in new.pipelines}
        for name in list(self.units):
            if name not in new_names:
                unit = self.units.pop(name)
                unit.stop()
                self.metrics.remove_pipeline(name)
                changed.append(f"removed {name}")
        self.cfg = self.cfg.model_copy(update={"pipelines": new.pipelines})
        for p in new.pipelines:
            old = self.units.get(p.name)
            if old is not None and old.cfg == p:
                continue
            if old is not None:
                old.stop()
            unit = self._build(p)
            self.units[p.name] = unit
            unit.updater.start()
            unit.pipeline.start()
            rebuilt.add(p.name)
            changed.append(f"{'restarted' if old else 'added'} {p.name}")
        if changed:
            for name, unit in self.units.items():
                if name not in rebuilt:
                    unit.pipeline.try_threads_again(cpu_budget(self.busy_threads(name)))
        return changed

    def healthy(self) -> bool:
        """Whether every pipeline's heartbeats are fresh (for the systemd watchdog)."""
        return all(u.pipeline.healthy() for u in self.units.values())

    # ------------------------------------------------------------------ status

    def busy_threads(self, exclude: str | None = None) -> int:
        """Interpreter threads the pipelines other than ``exclude`` use (``threads: auto``)."""
        return sum(int(u.pipeline.bundle.runtime.info.threads)
                   for name, u in list(self.units.items()) if name != exclude)

    def status(self) -> list[dict[str, Any]]:
        """Each pipeline's status entry."""
        out = []
        for u in self.units.values():
            st = u.pipeline.status()
            entry = {k: st[k] for k in ("name", "state", "source", "source_error", "model",
                                        "runtime", "target", "targets")}
            if "camera_health" in st:
                entry["camera_health"] = st["camera_health"]
            if self.cfg.thermal.enabled:
                entry["thermal"] = {**self.thermal.status(), "factor": st["thermal_factor"],
                                    "skipped": st["thermal_skipped"]}
            out.append(entry)
        return out

    def inventory(self) -> list[dict[str, Any]]:
        """Each pipeline's inventory entry: model, the updater's last state, delegate and
        execution targets (for ``privacy.messages.inventory``)."""
        out = []
        for u in list(self.units.values()):
            st = u.pipeline.status()
            out.append({"name": st["name"], "state": st["state"], "model": st["model"],
                        "model_state": u.updater.last_state(),
                        "delegate": st["runtime"].get("delegate"), "target": st["target"],
                        "targets": sorted(st["targets"])})
        return out

    def status_key(self) -> tuple[tuple[object, ...], ...]:
        """Changes when something worth a new retained status changes."""
        return tuple((u.pipeline.name, u.pipeline.state, u.pipeline.source_error,
                      u.pipeline.bundle.ref.sha256, u.pipeline.health_state,
                      u.pipeline.status()["target"], self.thermal.governor.level)
                     for u in self.units.values())

    def stats(self) -> dict[str, dict[str, Any]]:
        """Each pipeline's stats entry, by name."""
        out: dict[str, dict[str, Any]] = {}
        self.metrics.set_thermal(self.thermal.status() if self.cfg.thermal.enabled else None)
        for u in self.units.values():
            st = u.pipeline.status()
            out[u.pipeline.name] = {k: st[k] for k in (
                "state", "frames", "inferred", "published", "dropped", "gated", "errors",
                "bad_frames", "fps",
                "inference_ms_p50", "inference_ms_p95", "bad_lines", "target",
                "target_changes", "unlabeled", "thermal_factor", "thermal_skipped")}
            if self.cfg.thermal.enabled:
                self.metrics.set_gauge("edge_agent_thermal_factor", st["thermal_factor"],
                                       pipeline=u.pipeline.name)
                self.metrics.set_gauge("edge_agent_thermal_skipped_total",
                                       st["thermal_skipped"], pipeline=u.pipeline.name)
            self.metrics.set_gauge("edge_agent_fps", st["fps"], pipeline=u.pipeline.name)
            self.metrics.set_targets(u.pipeline.name, st["targets"], st["target_changes"])
            self.metrics.set_gauge("edge_agent_frames_dropped_total", st["dropped"],
                                   pipeline=u.pipeline.name)
        fig = self.energy.sample(sum(int(e["inferred"]) for e in out.values()))
        per_result = {
            "cpu_ms_per_result": None if fig.cpu_s_per_result is None
            else round(fig.cpu_s_per_result * 1000.0, 3),
            "energy_mj_per_result": None if fig.energy_j_per_result is None
            else round(fig.energy_j_per_result * 1000.0, 3),
            "power_w": None if fig.power_w is None else round(fig.power_w, 3)}
        for entry in out.values():  # process- and board-wide figures (README: Energy)
            entry.update(per_result)
        self.metrics.set_energy(fig.cpu_s_per_result, fig.energy_j_per_result, fig.power_w)
        return out

    def taps(self) -> dict[str, ViewTap]:
        """The live-view taps by pipeline name (empty when the view is off)."""
        return {name: u.tap for name, u in list(self.units.items()) if u.tap is not None}

    def view_state(self) -> list[dict[str, Any]]:
        """Per pipeline, what the live view's side panel shows."""
        out = []
        for u in list(self.units.values()):
            st = u.pipeline.status()
            entry = {k: st[k] for k in ("name", "state", "source", "source_error", "model",
                                        "runtime", "fps", "frames", "inferred",
                                        "inference_ms_p50", "inference_ms_p95", "dropped",
                                        "errors")}
            entry["stages_ms"] = {k: round(v, 2) for k, v in u.pipeline.stage_ms.items()}
            last = u.updater.last_state()
            entry["update"] = None if last is None else {
                k: last.get(k) for k in ("state", "name", "version", "reason")}
            entry["zones"] = [z.name for z in u.cfg.zones]
            if u.tap is not None:
                _, _, info = u.tap.latest()
                entry["view"] = info
                entry["viewers"] = u.tap.watchers
            out.append(entry)
        return out

    def privacy_counters(self) -> dict[str, Any]:
        """Each pipeline's privacy counters."""
        return {name: u.policy.counters() for name, u in self.units.items()}

    def republish_model_states(self) -> None:
        """The retained model state of every pipeline (at start-up and after reconnects)."""
        for u in self.units.values():
            u.updater.publish_current()

    def publish_discovery(self) -> None:
        """Home Assistant discovery, when enabled; entities of removed pipelines are deleted."""
        if not self.cfg.homeassistant.enabled:
            return

        announced = AnnouncedTopics(self.cfg.state_dir)
        msgs = discovery_configs(self.cfg, [u.cfg for u in self.units.values()],
                                 previous=announced.load())
        for topic, payload in msgs:
            self.guard.send(messages.discovery(self.seal, topic, payload))
        announced.save(msgs)

    def attach_homeassistant(self, transport: Subscribable) -> None:
        """Re-send discovery whenever Home Assistant says it came online."""
        if not self.cfg.homeassistant.enabled:
            return

        def on_status(topic: str, payload: bytes) -> None:
            if ha_came_online(payload):
                self.publish_discovery()

        transport.subscribe(ha_status_topic(self.cfg), on_status)

    # ------------------------------------------------------------------ commands

    def attach_commands(self, transport: Subscribable, guard: EgressGuard,
                        on_restart: Callable[[str], None] | None = None,
                        on_config: Callable[[str, str | None], None] | None = None) -> None:
        """Subscribe to the command topics and dispatch to the updaters (and the agent)."""
        def reply(request_id: str | None, ok: bool, error: str | None) -> None:
            guard.send(messages.cmd_reply(self.seal, device=self.cfg.device_id,
                                                  request_id=request_id or "unknown", ok=ok,
                                                  error=error))

        handlers: dict[str, Callable[[Command], ReplyData]] = {
            "model/update": self._cmd_update,
            "rollback": self._cmd_rollback,
            "model/rollback": self._cmd_rollback,
            "model/shadow": self._cmd_shadow,
            "model/promote": self._cmd_promote,
        }
        if on_restart is not None:
            restart = on_restart

            def cmd_restart(command: Command) -> None:
                restart(str(command.payload.get("reason") or "restart command"))

            handlers["restart"] = cmd_restart
        if on_config is not None:
            replace_config = on_config

            def cmd_config(command: Command) -> None:
                replace_config(str(command.payload["config"]), command.key_id)

            handlers["config"] = cmd_config
        self.dispatcher = CommandDispatcher(self.cfg, handlers, reply)
        self.dispatcher.attach(transport)

    def _unit_for(self, command: Command) -> _Unit:
        name = command.payload.get("pipeline")
        unit = self.units.get(name) if isinstance(name, str) else None
        if unit is None:
            raise EdgeAgentError(f"unknown pipeline {name!r} (this device has "
                                 f"{', '.join(self.units)})")
        return unit

    def _cmd_update(self, command: Command) -> bool:
        return self._unit_for(command).updater.handle_update(dict(command.payload),
                                                             command.group)

    def _cmd_shadow(self, command: Command) -> bool:
        return self._unit_for(command).updater.handle_shadow(dict(command.payload),
                                                             command.group)

    def _cmd_promote(self, command: Command) -> bool:
        return self._unit_for(command).updater.promote(str(command.payload["request_id"]),
                                                       command.payload.get("sha256"))

    def _cmd_rollback(self, command: Command) -> bool:
        return self._unit_for(command).updater.rollback(str(command.payload["request_id"]),
                                                        command.payload.get("sha256"))


__all__ = ["PipelineSet"]
