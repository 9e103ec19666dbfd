"""The daemon: wires config, transport, egress guard, policies, pipelines, updaters, commands,
metrics and systemd notification together, and runs until SIGTERM/SIGINT.

Start-up: validate config -> preflight (models load and fit their decoders) -> transport and
guard -> pipelines -> READY=1. Shutdown, in reverse data-flow order: sources and pipelines,
then flush the publisher, then the retained ``offline`` status, then disconnect. SIGHUP reloads
the config: changed pipelines restart in place, the others keep running; an invalid new config
is refused with the same one-line errors and the old one keeps running.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import platform
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent import __version__, sysinfo
from edge_agent.config import AgentConfig, load_config
from edge_agent.contract.messages import OutgoingMessage
from edge_agent.contract.payloads import StatusState
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.face_detector import build_face_detector
from edge_agent.logsetup import setup_logging
from edge_agent.metrics import Metrics, MetricsServer
from edge_agent.mqtt.client import MqttTransport
from edge_agent.notify import SystemdNotifier, Watchdog
from edge_agent.pipeline_set import PipelineSet
from edge_agent.preflight import preflight
from edge_agent.privacy import messages
from edge_agent.privacy.audit import AuditLog
from edge_agent.privacy.egress import EgressGuard
from edge_agent.privacy.policy import iso_ts
from edge_agent.privacy.seal import new_seal
from edge_agent.remote_config import local_weakenings, weakenings
from edge_agent.runtime.targets import TargetRuntime
from edge_agent.signals import SignalRelay
from edge_agent.signing import load_public_keys
from edge_agent.sysinfo import cpu_temperature
from edge_agent.view.server import ViewServer, load_token

logger = logging.getLogger(__name__)

EX_RESTART = 75  # EX_TEMPFAIL: a requested restart; systemd's Restart=on-failure restarts us


class Agent:
    """One running daemon.

    Args:
        config: the validated config.
        config_file: where it came from (for reloads and error lines).
    """

    def __init__(self, config: AgentConfig, config_file: Path) -> None:
        self.config = config
        self.config_file = config_file
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self.started_at = time.time()
        self._last_status_key: tuple[tuple[object, ...], ...] | None = None
        self.exit_code = 0
        self._stats_failures = 0
        self._inventory_key: str | None = None
        self.inventory_dirty = threading.Event()

    # ------------------------------------------------------------------ wiring

    def _build(self, checked: dict[str, TargetRuntime] | None = None) -> None:
        """``checked``: runtimes the start-up check loaded, by pipeline; the pipelines take
        (pop) the ones they use."""
        cfg = self.config
        self.messages = messages
        self.seal = new_seal()
        self.transport = MqttTransport(cfg, cfg.state_dir)
        self.audit = AuditLog(cfg.state_dir / "audit", cfg.audit) if cfg.audit.enabled else None
        self.guard = EgressGuard(self.transport, cfg.mqtt.topic_prefix, cfg.device_id,
                                 self.audit, self.seal, qos=cfg.mqtt.qos,
                                 discovery_prefix=cfg.homeassistant.discovery_prefix)
        self.metrics = Metrics(state_dir=cfg.state_dir)
        self.metrics_server: MetricsServer | None = None
        if cfg.metrics.prometheus.enabled:
            self.metrics_server = MetricsServer(self.metrics, cfg.metrics.prometheus.bind,
                                                cfg.metrics.prometheus.port,
                                                cfg.metrics.prometheus.max_connections)
        face_detector = build_face_detector(cfg)
        self.pipelines = PipelineSet(cfg, self.seal, self.guard, self.metrics, face_detector,
                                     on_state=self.publish_model_state, checked=checked)
        self.view_server: ViewServer | None = None
        if cfg.view.enabled:
            self.view_server = ViewServer(cfg.view, load_token(cfg.view), self.pipelines.taps,
                                          self.view_state)

    # ------------------------------------------------------------------ messages

    def status_message(self, state: StatusState) -> OutgoingMessage:
        """The retained status message (online or offline)."""
        pipelines = self.pipelines.status() if state == "online" else []
        return self.messages.status(
            self.seal, device=self.config.device_id, state=state, agent_version=__version__,
            started_at=self.started_at, pipelines=pipelines, boot_id=self.transport.boot_id,
            outbox=self._outbox_stats(), mqtt=self._mqtt_stats())

    def _mqtt_stats(self) -> dict[str, Any]:
        """The broker connection for status and stats: connected, reconnects, connect
        failures, the last error and since when the broker is unreachable (None: it is not)."""
        st = self.transport.stats()
        down = st.get("down_since")
        return {"connected": bool(st.get("connected")), "reconnects": st.get("reconnects", 0),
                "connect_failures": st.get("connect_failures", 0),
                "last_error": st.get("last_error"),
                "down_since": None if down is None else iso_ts(float(down))}

    def _outbox_stats(self) -> dict[str, Any]:
        st = self.transport.stats()
        return {"depth": st.get("outbox_depth", 0), "dropped": st.get("outbox_dropped", 0),
                "store_failed": st.get("outbox_store_failed", 0)}

    def publish_status(self) -> None:
        """Publish the retained online status now."""
        self.guard.send(self.status_message("online"))

    def publish_model_state(self, payload: dict[str, Any]) -> None:
        """Publish a retained model state message for a pipeline (the inventory follows)."""
        self.guard.send(self.messages.model_state(self.seal, device=self.config.device_id,
                                                  **payload))
        self.inventory_dirty.set()

    def inventory_message(self) -> OutgoingMessage:
        """The retained inventory: versions, board, pipelines and models, groups, keys."""
        pipelines = self.pipelines.inventory()
        backend = version = None
        for p in self.pipelines.status():
            backend, version = p["runtime"].get("backend"), p["runtime"].get("version")
            break
        board = {"model": sysinfo.board_model(), "soc": sysinfo.soc_name(),
                 "machine": platform.machine() or None, "cpus": os.cpu_count(),
                 "memory_mb": sysinfo.memory_mb(), "cpu_temp_c": sysinfo.cpu_temperature()}
        return self.messages.inventory(
            self.seal, device=self.config.device_id, agent_version=__version__,
            runtime={"backend": backend, "version": version,
                     "python": platform.python_version()},
            board=board, pipelines=pipelines, groups=self.config.mqtt.groups,
            trusted_keys=self._trusted_keys(), boot_id=self.transport.boot_id)

    def _trusted_keys(self) -> list[str]:
        """Key ids of the configured public keys (updates and commands); unreadable ones
        were reported by preflight and are left out here."""
        ids: set[str] = set()
        for paths in (self.config.updates.public_keys, self.config.commands.public_keys):
            with contextlib.suppress(Exception):  # preflight said what is wrong with a file
                ids.update(load_public_keys(paths))
        return sorted(ids)

    def publish_inventory(self, force: bool = False) -> None:
        """Publish the inventory when what it says changed (model swap, reload, update
        state), or always with ``force`` (after a connect). The time and temperature alone
        do not count as a change."""
        self.inventory_dirty.clear()
        msg = self.inventory_message()
        what = {k: v for k, v in msg.payload.items() if k != "ts"}
        what["board"] = {k: v for k, v in what["board"].items() if k != "cpu_temp_c"}
        key = repr(what)
        if force or key != self._inventory_key:
            self._inventory_key = key
            self.guard.send(msg)

    def publish_stats(self) -> None:
        """Publish the stats message and refresh the metrics gauges."""
        st = self.transport.stats()
        pipes = self.pipelines.stats()

        privacy = self.pipelines.privacy_counters()
        for name, entry in pipes.items():
            entry["privacy"] = privacy.get(name, {})
        self.guard.send(self.messages.stats(
            self.seal, device=self.config.device_id, pipelines=pipes,
            uptime_s=time.time() - self.started_at, outbox=self._outbox_stats(),
            mqtt=self._mqtt_stats(),
            egress=self.guard.counters(), cpu_temp_c=cpu_temperature()))
        self.metrics.set_gauge("edge_agent_outbox_depth", st.get("outbox_depth", 0))
        self.metrics.set_gauge("edge_agent_outbox_dropped_total", st.get("outbox_dropped", 0))

    def view_state(self) -> dict[str, Any]:
        """The live view's state: the device and, per pipeline, what its panel shows."""
        return {"device": self.config.device_id, "agent_version": __version__,
                "pipelines": self.pipelines.view_state()}

    def _on_connected(self) -> None:
        self.publish_status()
        self.pipelines.republish_model_states()
        self.publish_inventory(force=True)
        self.pipelines.publish_discovery()

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until stopped; return the exit code (0 on a clean stop)."""
        # the check loads each pipeline's model; the pipelines take those runtimes instead of
        # loading every model a second time (seconds on a small board)
        checked: dict[str, TargetRuntime] = {}
        try:
            problems = preflight(self.config, self.config_file, open_sources=False,
                                 keep=checked)
            if problems:
                raise ConfigError(problems)
            self._build(checked)
        finally:
            for runtime in checked.values():  # the ones no pipeline took
                runtime.close()

        for line in local_weakenings(self.config):  # the device's own opt-ins, on record
            logger.warning("privacy/security opt-in in the local config: %s", line)
            if self.audit is not None:
                self.audit.record(topic="", kind="config", size=0, outcome="opt_in",
                                  reason=f"local config: {line}")
        notifier = SystemdNotifier()
        relay = self._install_signals()
        self.guard.set_will(self.status_message("offline"))
        self.transport.on_connected(self._on_connected)
        self.pipelines.attach_commands(self.transport, self.guard, self.request_restart,
                                       self.replace_config)
        self.pipelines.attach_homeassistant(self.transport)
        self.transport.start()
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.pipelines.start_all()
        if self.view_server is not None:
            self.view_server.start()
        notifier.notify("READY=1", f"STATUS=running {len(self.config.pipelines)} pipelines")
        logger.info("edge-agent %s running: device %s, %d pipelines, broker %s:%d",
                    __version__, self.config.device_id, len(self.config.pipelines),
                    self.config.mqtt.host, self.config.mqtt.port)
        watchdog = Watchdog(notifier, self.pipelines.healthy)
        watchdog.start()
        next_stats = time.monotonic() + self.config.mqtt.stats_interval_s
        try:
            while not self.stop_event.wait(0.5):
                if self.reload_event.is_set():
                    self.reload_event.clear()
                    notifier.reloading()
                    self.reload()
                    notifier.ready()
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + self.config.mqtt.stats_interval_s
                    try:
                        self.publish_stats()
                    except Exception as exc:  # loop boundary: e.g. EMFILE; never exit for it
                        self._stats_failures += 1
                        if self._stats_failures in (1, 10) or self._stats_failures % 100 == 0:
                            logger.error("publishing stats failed (%d times so far): %s: %s",
                                         self._stats_failures, type(exc).__name__, exc)
                key = self.pipelines.status_key()
                if key != self._last_status_key:
                    self._last_status_key = key
                    self.publish_status()
                    self.inventory_dirty.set()
                if self.inventory_dirty.is_set():
                    self.publish_inventory()
        finally:
            notifier.stopping()
            watchdog.stop()
            self.shutdown()
            notifier.close()
            relay.stop()
        return self.exit_code

    def shutdown(self) -> None:
        """Stop pipelines, flush, publish offline, disconnect."""
        logger.info("stopping")
        if self.view_server is not None:
            self.view_server.stop()
        self.pipelines.stop_all()
        self.guard.send(self.status_message("offline"))
        self.transport.stop(timeout=10.0)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.audit is not None:
            self.audit.close()
        logger.info("stopped")

    def request_restart(self, reason: str) -> None:
        """Stop cleanly and exit with EX_TEMPFAIL, so systemd (Restart=on-failure) restarts us.

        Called by the signed ``restart`` command; the reply goes out before the stop.
        """
        logger.warning("restart requested: %s", reason)
        self.exit_code = EX_RESTART
        self.stop_event.set()

    def replace_config(self, text: str, key_id: str | None = None) -> None:
        """Apply a whole new config file sent by the signed ``config`` command.

        The text is validated and preflighted exactly like a local edit, and refused when it
        changes a setting only the device's own config may change
        (:func:`edge_agent.remote_config.weakenings`: privacy, audit, signatures, keys, url
        override, broker); only then is the file replaced (atomically, the old one kept as
        ``<file>.previous``), the change audited with the signing key's id, and reloaded as
        on SIGHUP. Raises ConfigError (one line per problem, sent back in the reply) otherwise.
        """
        folder = self.config_file.parent
        candidate = folder / f".{self.config_file.name}.incoming"
        try:
            candidate.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{self.config_file}: cannot write the new config next to it: "
                              f"{exc.strerror or exc} (under systemd: give the config a "
                              "folder of its own, see README: remote config)") from None
        try:
            new, _ = load_config(candidate)
            refused = weakenings(self.config, new)
            if refused:
                logger.warning("config command (key %s) refused: it changes %s", key_id,
                               "; ".join(refused))
                self._audit_config("refused", key_id, refused)
                raise ConfigError([f"refused: a remote config command may not change "
                                   f"{line} (only the device's own config may)"
                                   for line in refused])
            problems = preflight(new, candidate, open_sources=False)
            if problems:
                raise ConfigError(problems)
            if self.config_file.exists():
                previous = folder / f"{self.config_file.name}.previous"
                previous.write_bytes(self.config_file.read_bytes())
            os.replace(candidate, self.config_file)
        finally:
            candidate.unlink(missing_ok=True)
        logger.warning("config replaced by a config command signed by key %s; reloading", key_id)
        self._audit_config("applied", key_id, [])
        self.reload_event.set()

    def _audit_config(self, outcome: str, key_id: str | None, changes: list[str]) -> None:
        """An audit line for a config change (who signed it, what it tried to change)."""
        if self.audit is None:
            return
        reason = f"config command signed by key {key_id}"
        if changes:
            reason += ": " + "; ".join(changes)[:1000]
        self.audit.record(topic="", kind="config", size=0, outcome=outcome, reason=reason)

    def _install_signals(self) -> SignalRelay:
        """SIGTERM/SIGINT stop, SIGHUP reloads; the events are set on a relay thread, never
        inside a handler (see :mod:`edge_agent.signals`: a handler that sets an Event can
        deadlock the main loop waiting on it)."""
        relay = SignalRelay({signal.SIGTERM: self.stop_event.set,
                             signal.SIGINT: self.stop_event.set,
                             signal.SIGHUP: self.reload_event.set})
        relay.start()
        # `kill -USR1 <pid>` writes every thread's stack to stderr (the journal under
        # systemd): how to see where a daemon that does not stop or answer is stuck
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        return relay

    def reload(self) -> bool:
        """Re-read the config file; apply pipeline changes, or keep the old config."""
        try:
            new, _ = load_config(self.config_file)
            problems = preflight(new, self.config_file, open_sources=False)
            if problems:
                raise ConfigError(problems)
        except ConfigError as exc:
            for line in exc.problems:
                logger.error("reload refused: %s", line)
            logger.error("reload refused: keeping the running config")
            return False
        if new.model_dump(exclude={"pipelines"}) != self.config.model_dump(exclude={"pipelines"}):
            logger.warning("reload: device-wide settings changed (mqtt, updates, metrics...); "
                           "they take effect at the next restart")
        changed = self.pipelines.apply(new)
        self.config = self.config.model_copy(update={"pipelines": new.pipelines})
        logger.info("reload: applied (%s)", ", ".join(changed) or "no pipeline changed")
        self.publish_status()
        self.inventory_dirty.set()
        self.pipelines.publish_discovery()  # entities of added/removed pipelines
        return True


def cmd_run(args: argparse.Namespace) -> int:
    """``edge-agent run [-c FILE]``."""
    config, path = load_config(args.config)
    setup_logging(config.logging)
    try:
        return Agent(config, path).run()
    except ConfigError:
        raise
    except EdgeAgentError as exc:
        logger.error("%s", exc)
        return 1
