"""Fleet commands: ``edge-agent fleet status`` and ``edge-agent fleet rollout``.

Both run on the operator's machine and learn the fleet from what devices retain on the broker:
``P/D/status`` (online/offline; offline is the last will), ``P/D/inventory`` (groups, pipelines
and models) and ``P/D/model/<pipeline>/state``; ``P/D/stats`` adds fps, p95 inference, outbox
depth and errors while the view runs. The MQTT client is the consumer library's
:class:`~edge_agent.mqtt.inbound.InboundClient` (MQTT 5, TLS and credentials from the
``--broker`` options).

A rollout sends the signed manifest to a growing share of a group, one device at a time
topic (``P/D/cmd/model/update``), devices ordered by sha256 of their id (deterministic, so the
same devices are the canaries every time), and waits for each device's verdict: ``active``
followed by the second ``active`` of a passed watch (or ``--no-watch``), or ``rejected`` /
``rolled_back``. A wave whose failures exceed ``--max-failures`` halts the rollout. Progress is
kept in a local JSON file so ``--resume`` never sends a device the update twice; the devices'
retained model states are the truth about where each one is.

``--shadow`` adds a shadow phase: each device of a wave gets ``P/D/cmd/model/shadow`` instead,
runs the model beside its active one and promotes it by the manifest's ``shadow`` gate (then
``active`` as above) or rejects it with the figures (``rejected``: a failure of the wave).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.consumer.messages import parse_ts
from edge_agent.errors import ConfigError, UpdateError

SETTLE_S = 0.7
"""After subscribing: the retained messages have arrived once nothing came for this long."""


# ---------------------------------------------------------------------------------- the fleet


@dataclass
class Device:
    """What the broker told us about one device."""

    device: str
    online: bool | None = None
    since: str | None = None
    last_seen: float | None = None
    agent_version: str | None = None
    groups: tuple[str, ...] = ()
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    inventory: dict[str, Any] | None = None


class Fleet:
    """The fleet's state from the retained and live messages of ``prefix``.

    ``on_state`` is called (on the network thread) with ``(device, pipeline, payload,
    retained)`` for every model state message.
    """

    def __init__(self, prefix: str, on_state: Any = None) -> None:
        self.prefix = prefix
        self.devices: dict[str, Device] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.last_message = time.monotonic()
        self.messages = 0
        self.on_state = on_state

    def topics(self) -> list[str]:
        p = self.prefix
        return [f"{p}/+/status", f"{p}/+/inventory", f"{p}/+/model/+/state", f"{p}/+/stats",
                f"{p}/+/cmd/reply"]

    def on_message(self, msg: Any) -> None:
        """An :class:`InboundMessage` from the client."""
        head = self.prefix + "/"
        if not msg.topic.startswith(head):
            return
        parts = msg.topic[len(head):].split("/")
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except (ValueError, UnicodeDecodeError):
            return
        if payload is not None and not isinstance(payload, dict):
            return
        with self.lock:
            self.last_message = time.monotonic()
            self.messages += 1
            if payload is None:  # a cleared retained message
                return
            name = parts[0]
            dev = self.devices.get(name)
            if dev is None:
                dev = self.devices[name] = Device(name)
            kind = parts[1] if len(parts) > 1 else ""
            if kind == "status" and len(parts) == 2:
                dev.online = payload.get("state") == "online"
                dev.since = payload.get("ts") if isinstance(payload.get("ts"), str) else None
                dev.agent_version = payload.get("agent_version") or dev.agent_version
                if not msg.retain:
                    dev.last_seen = time.time()
                elif dev.since:
                    dev.last_seen = _ts(dev.since)
                for p in payload.get("pipelines") or []:
                    if isinstance(p, dict) and isinstance(p.get("name"), str):
                        dev.pipelines.setdefault(p["name"], {}).update(
                            {k: p.get(k) for k in ("state", "model") if k in p})
            elif kind == "inventory" and len(parts) == 2:
                dev.inventory = payload
                dev.groups = tuple(str(g) for g in payload.get("groups") or [])
                dev.agent_version = payload.get("agent_version") or dev.agent_version
                for p in payload.get("pipelines") or []:
                    if isinstance(p, dict) and isinstance(p.get("name"), str):
                        dev.pipelines.setdefault(p["name"], {}).update(
                            {"state": p.get("state"), "model": p.get("model")})
            elif kind == "stats" and len(parts) == 2:
                dev.stats = payload
                dev.last_seen = time.time()
            elif kind == "model" and len(parts) == 4 and parts[3] == "state":
                dev.states[parts[2]] = payload
                if payload.get("state") == "active" and isinstance(payload.get("active"), dict):
                    dev.pipelines.setdefault(parts[2], {})["model"] = payload["active"]
                if not msg.retain:
                    dev.last_seen = time.time()
            elif kind == "cmd" and parts[2:] == ["reply"]:
                rid = payload.get("request_id")
                if isinstance(rid, str):
                    self.replies[rid] = {"device": name, **payload}
                return
            else:
                return
        if kind == "model" and self.on_state is not None:
            self.on_state(name, parts[2], payload, bool(msg.retain))

    def settled(self) -> bool:
        return time.monotonic() - self.last_message > SETTLE_S

    def snapshot(self, group: str | None = None) -> list[Device]:
        """The devices (of ``group``), sorted by id; copies."""
        with self.lock:
            devs = [Device(d.device, d.online, d.since, d.last_seen, d.agent_version, d.groups,
                           {k: dict(v) for k, v in d.pipelines.items()},
                           {k: dict(v) for k, v in d.states.items()}, dict(d.stats),
                           d.inventory)
                    for d in self.devices.values()]
        if group is not None:
            devs = [d for d in devs if group in d.groups]
        return sorted(devs, key=lambda d: d.device)


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_ts(text)
    except ValueError:
        return None


def connect(args: argparse.Namespace, fleet: Fleet, timeout: float = 10.0) -> Any:
    """An :class:`InboundClient` subscribed to the fleet's topics, retained messages in."""
    # imported here: start-up (measured: at the top, importing this module 0.65 -> 2.3 s)
    from edge_agent.consumer.options import broker_from_args
    from edge_agent.mqtt.inbound import InboundClient

    broker = broker_from_args(args)
    client = InboundClient(broker, fleet.topics(), fleet.on_message)
    if not client.start(timeout=timeout):
        client.stop()
        why = f" ({client.refused})" if client.refused else ""
        raise UpdateError(f"cannot reach the broker at {broker.host}:{broker.port}{why}")
    deadline = time.monotonic() + timeout
    while not fleet.settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    return client


# ---------------------------------------------------------------------------------- status


def _model(p: dict[str, Any]) -> dict[str, Any] | None:
    m = p.get("model")
    if not isinstance(m, dict):
        return None
    return {"name": m.get("name"), "version": m.get("version"), "sha256": m.get("sha256")}


def device_rows(devices: Iterable[Device]) -> list[dict[str, Any]]:
    """The JSON rows of ``fleet status --json`` (DESIGN.md's contract, plus details)."""
    rows = []
    for d in devices:
        stats = d.stats.get("pipelines") if isinstance(d.stats.get("pipelines"), dict) else {}
        pipes: dict[str, Any] = {}
        for name, p in sorted(d.pipelines.items()):
            st = stats.get(name) if isinstance(stats, dict) else None
            st = st if isinstance(st, dict) else {}
            ms = d.states.get(name) or {}
            pipes[name] = {"model": _model(p), "state": p.get("state"),
                           "model_state": ms.get("state"), "fps": st.get("fps"),
                           "inference_ms_p95": st.get("inference_ms_p95"),
                           "errors": st.get("errors")}
        outbox = d.stats.get("outbox") if isinstance(d.stats.get("outbox"), dict) else {}
        rows.append({"device": d.device, "online": bool(d.online), "since": d.since,
                     "last_seen": None if d.last_seen is None else
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.last_seen)),
                     "agent_version": d.agent_version, "groups": list(d.groups),
                     "pipelines": pipes, "outbox_depth": (outbox or {}).get("depth")})
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """online/total, the model versions in use (per pipeline and model name: version ->
    devices) and the devices behind (running an older version than the newest in use)."""
    versions: dict[str, dict[str, int]] = {}
    newest: dict[str, int] = {}
    for r in rows:
        for pipe, p in r["pipelines"].items():
            m = p["model"]
            if not m or not isinstance(m.get("version"), int):
                continue
            key = f"{pipe}:{m['name']}"
            versions.setdefault(key, {})
            v = str(m["version"])
            versions[key][v] = versions[key].get(v, 0) + 1
            newest[key] = max(newest.get(key, 0), m["version"])
    behind = sorted({r["device"] for r in rows for pipe, p in r["pipelines"].items()
                     if p["model"] and isinstance(p["model"].get("version"), int)
                     and p["model"]["version"] < newest[f"{pipe}:{p['model']['name']}"]})
    return {"online": sum(1 for r in rows if r["online"]), "total": len(rows),
            "versions": versions, "behind": behind}


SORT_KEYS = ("device", "online", "version", "fps", "p95", "errors")


def render_table(rows: list[dict[str, Any]], sort: str = "device") -> str:
    """The human table and its summary line."""
    def key(r: dict[str, Any]) -> Any:
        first: dict[str, Any] = next(iter(r["pipelines"].values()), {})
        if sort == "online":
            return (not r["online"], r["device"])
        if sort == "version":
            return ((first.get("model") or {}).get("version") or 0, r["device"])
        if sort in ("fps", "p95", "errors"):
            field_ = {"fps": "fps", "p95": "inference_ms_p95", "errors": "errors"}[sort]
            return (-(first.get(field_) or 0), r["device"])
        return r["device"]

    head = ("DEVICE", "ONLINE", "SINCE", "LAST SEEN", "PIPELINE", "MODEL", "STATE", "FPS",
            "P95 MS", "OUTBOX", "ERRORS")
    lines = [head]
    for r in sorted(rows, key=key):
        pipes = r["pipelines"] or {"-": {}}
        for i, (name, p) in enumerate(pipes.items()):
            m = p.get("model") or {}
            lines.append((
                r["device"] if i == 0 else "", ("online" if r["online"] else "OFFLINE")
                if i == 0 else "", (r["since"] or "-")[:19] if i == 0 else "",
                (r["last_seen"] or "-")[11:19] if i == 0 else "", name,
                f"{m.get('name')} v{m.get('version')}" if m else "-",
                str(p.get("model_state") or p.get("state") or "-"),
                _num(p.get("fps")), _num(p.get("inference_ms_p95")),
                str(r["outbox_depth"]) if r["outbox_depth"] is not None and i == 0 else "",
                str(p.get("errors")) if p.get("errors") is not None else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    s = summary(rows)
    used = "; ".join(f"{k} " + ", ".join(f"v{v}: {n}" for v, n in sorted(
        vs.items(), key=lambda kv: int(kv[0]))) for k, vs in sorted(s["versions"].items()))
    out.append("")
    out.append(f"{s['online']}/{s['total']} online; versions: {used or 'none'}; "
               f"behind: {len(s['behind'])}" + (f" ({', '.join(s['behind'])})"
                                                 if s["behind"] else ""))
    return "\n".join(out)


def _num(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def cmd_fleet_status(args: argparse.Namespace) -> int:
    """``fleet status --broker H[:P] [--group G] [--once] [--json] [--sort KEY]``."""
    fleet = Fleet(args.topic_prefix)
    client = connect(args, fleet, timeout=args.timeout)
    try:
        once = args.once or args.json or not sys.stdout.isatty()
        if once:
            rows = device_rows(fleet.snapshot(args.group))
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                print(render_table(rows, args.sort))
            return 0
        try:
            while True:
                rows = device_rows(fleet.snapshot(args.group))
                sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") +
                                 f"fleet {args.topic_prefix}" +
                                 (f" group {args.group}" if args.group else "") + "\n\n" +
                                 render_table(rows, args.sort) + "\n")
                sys.stdout.flush()
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0
    finally:
        client.stop()


# ---------------------------------------------------------------------------------- rollout


def parse_waves(text: str) -> list[float]:
    """``1,10,50,100%`` as cumulative fractions ending at 1.0."""
    out: list[float] = []
    for part in text.replace("%", "").split(","):
        part = part.strip()
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"--waves {text!r}: {part!r} is not a percentage") from None
        if not 0 < v <= 100 or (out and v / 100 <= out[-1]):
            raise ConfigError(f"--waves {text!r}: percentages must grow, each in (0, 100]")
        out.append(v / 100)
    if not out:
        raise ConfigError("--waves: empty")
    if out[-1] < 1.0:
        out.append(1.0)
    return out


def parse_max_failures(text: str) -> tuple[float, bool]:
    """``10%`` (a share of the wave) or ``2`` (a count): (value, is_share)."""
    share = text.strip().endswith("%")
    try:
        v = float(text.strip().rstrip("%"))
    except ValueError:
        raise ConfigError(f"--max-failures {text!r}: expected N or N%") from None
    if v < 0 or (share and v > 100):
        raise ConfigError(f"--max-failures {text!r}: out of range")
    return (v / 100 if share else v), share


def order(devices: Iterable[str]) -> list[str]:
    """Devices in rollout order: by sha256 of their id (stable across runs and machines)."""
    return sorted(devices, key=lambda d: (hashlib.sha256(d.encode()).hexdigest(), d))


def plan_waves(devices: list[str], waves: list[float]) -> list[list[str]]:
    """Split the ordered devices into waves of the cumulative shares (each at least one)."""
    out: list[list[str]] = []
    done = 0
    for share in waves:
        upto = min(len(devices), max(done + 1, math.ceil(share * len(devices))))
        if upto > done:
            out.append(devices[done:upto])
            done = upto
    return out


class Rollout:
    """One rollout's progress, kept in a JSON file after every change."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @property
    def devices(self) -> dict[str, dict[str, Any]]:
        d: dict[str, dict[str, Any]] = self.data["devices"]
        return d

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", "utf-8")
        os.replace(tmp, self.path)

    def set(self, device: str, **values: Any) -> None:
        self.devices[device].update(values)
        self.save()


class _Verdicts:
    """Live model state messages of the rolled-out sha256, turned into per-device verdicts."""

    def __init__(self, pipeline: str, sha256: str, watch: bool) -> None:
        self.pipeline = pipeline
        self.sha256 = sha256
        self.watch = watch
        self.lock = threading.Lock()
        self.actives: dict[str, int] = {}
        self.verdict: dict[str, tuple[str, str | None]] = {}
        self.changed = threading.Event()

    def on_state(self, device: str, pipeline: str, payload: dict[str, Any],
                 retained: bool) -> None:
        if pipeline != self.pipeline or retained:
            return
        state = payload.get("state")
        about = str(payload.get("sha256") or "").lower()
        with self.lock:
            if about != self.sha256:
                return
            if state == "active":
                n = self.actives[device] = self.actives.get(device, 0) + 1
                if n >= 2 or not self.watch:
                    self.verdict[device] = ("active", None)
            elif state in ("rejected", "rolled_back"):
                self.verdict[device] = (str(state), str(payload.get("reason") or state))
            else:
                return
        self.changed.set()

    def get(self, device: str) -> tuple[str, str | None] | None:
        with self.lock:
            return self.verdict.get(device)


def _on_target(dev: Device | None, pipeline: str, sha256: str) -> bool:
    """The device's retained state says the target model is active on the pipeline."""
    if dev is None:
        return False
    st = dev.states.get(pipeline) or {}
    return st.get("state") == "active" and str(st.get("sha256", "")).lower() == sha256


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / max(1, total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def cmd_fleet_rollout(args: argparse.Namespace) -> int:
    """``fleet rollout MANIFEST --group G --pipeline P --broker H[:P] ...``: exit 0 when every
    targeted device is active, 1 when halted or incomplete (also after Ctrl-C)."""
    # imported here: start-up (measured: at the top, importing this module 0.65 -> 2.3 s)
    from edge_agent.updater.manifest import parse_manifest

    raw = _load_json(args.manifest)
    manifest = parse_manifest(raw)
    sha = manifest.sha256.lower()
    waves = parse_waves(args.waves)
    limit, share = parse_max_failures(args.max_failures)
    data_b64: str | None = None
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UpdateError(f"--file {path}: no such file")
        blob = path.read_bytes()
        if len(blob) != manifest.size or hashlib.sha256(blob).hexdigest() != sha:
            raise UpdateError(f"--file {path} does not match the manifest (size/sha256)")
        data_b64 = base64.b64encode(blob).decode()
    elif not manifest.url:
        raise UpdateError("the manifest has no url: sign it with --url or roll out with --file")
    if getattr(args, "shadow", False):
        # imported here: start-up (measured: at the top, importing this module 0.65 -> 2.3 s)
        from edge_agent.shadow import ShadowGate

        if "shadow" not in raw:
            raise UpdateError("--shadow needs a manifest with a shadow gate (model sign "
                              "--shadow-frames N --shadow-min-recall ...): the devices decide "
                              "by it")
        ShadowGate.parse(raw["shadow"])
        if args.shadow_every < 1:
            raise UpdateError("--shadow-every must be 1 or more")
    key = None
    if args.rollback_on_halt:
        if not args.key:
            raise ConfigError("--rollback-on-halt needs --key (the rollback command is signed)")
        # imported here: start-up (measured: at the top, importing this module 0.65 -> 2.3 s)
        from edge_agent.signing import load_private_key

        key = load_private_key(args.key)
    progress = Path(args.progress or f"rollout-{args.group}-{args.pipeline}.progress.json")
    verdicts = _Verdicts(args.pipeline, sha, watch=not args.no_watch)
    fleet = Fleet(args.topic_prefix, on_state=verdicts.on_state)
    client = connect(args, fleet, timeout=args.connect_timeout)
    try:
        rollout = _open_rollout(args, progress, sha, manifest, fleet, waves)
        return _run(args, rollout, fleet, client, verdicts, raw, data_b64, limit, share, key)
    except KeyboardInterrupt:
        print(f"\ninterrupted: progress kept in {progress}; carry on with --resume",
              file=sys.stderr)
        return 1
    finally:
        client.stop()


def _load_json(path: str) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise UpdateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UpdateError(f"{path}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UpdateError(f"{path}: not a JSON object")
    return obj


def _open_rollout(args: argparse.Namespace, progress: Path, sha: str, manifest: Any,
                  fleet: Fleet, waves: list[float]) -> Rollout:
    if args.resume:
        if not progress.is_file():
            raise ConfigError(f"--resume: no progress file {progress}")
        data = _load_json(str(progress))
        if data.get("sha256") != sha or data.get("group") != args.group or \
                data.get("pipeline") != args.pipeline:
            raise ConfigError(f"--resume: {progress} is a rollout of another model, group or "
                              "pipeline")
        return Rollout(progress, data)
    if progress.is_file():
        old = _load_json(str(progress))
        if old.get("finished") is None:
            raise ConfigError(f"{progress}: an unfinished rollout; carry on with --resume "
                              "or delete the file")
    members = [d.device for d in fleet.snapshot(args.group)
               if args.pipeline in d.pipelines or args.pipeline in d.states]
    if not members:
        raise UpdateError(f"no device of group {args.group!r} with pipeline {args.pipeline!r} "
                          "on the broker (is their inventory retained?)")
    plan = plan_waves(order(members), waves)
    data = {"manifest": {"name": manifest.name, "version": manifest.version},
            "sha256": sha, "group": args.group, "pipeline": args.pipeline,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "finished": None,
            "halted": None, "waves": plan,
            "devices": {d: {"wave": i + 1, "outcome": "waiting", "reason": None,
                            "sent": None, "request_id": None}
                        for i, wave in enumerate(plan) for d in wave}}
    r = Rollout(progress, data)
    r.save()
    return r


def _run(args: argparse.Namespace, r: Rollout, fleet: Fleet, client: Any, verdicts: _Verdicts,
         raw: dict[str, Any], data_b64: str | None, limit: float, share: bool,
         key: Any) -> int:
    p = args.topic_prefix
    m = r.data["manifest"]
    print(f"rollout of {m['name']} v{m['version']} to group {r.data['group']} pipeline "
          f"{r.data['pipeline']}: {len(r.devices)} devices in {len(r.data['waves'])} waves")
    for i, wave in enumerate(r.data["waves"], start=1):
        if r.data.get("halted"):
            break
        snap = {d.device: d for d in fleet.snapshot()}
        to_wait: list[str] = []
        for device in wave:
            entry = r.devices[device]
            if entry["outcome"] in ("active", "failed", "rolled_back_by_operator"):
                continue
            dev = snap.get(device)
            if entry["sent"] is None and _on_target(dev, r.data["pipeline"], r.data["sha256"]):
                r.set(device, outcome="active", reason="already on this model")
                continue
            if entry["sent"] is not None:
                # sent before an interruption: the retained state is the truth
                if _on_target(dev, r.data["pipeline"], r.data["sha256"]):
                    r.set(device, outcome="active", reason=None)
                    continue
                st = (dev.states.get(r.data["pipeline"]) if dev else None) or {}
                if str(st.get("sha256", "")).lower() == r.data["sha256"] and \
                        st.get("state") in ("rejected", "rolled_back"):
                    r.set(device, outcome="failed", reason=st.get("reason") or st["state"])
                    continue
                to_wait.append(device)  # still on its way: wait, never send again
                continue
            if dev is None or not dev.online:  # --include-offline: sent when it is back
                r.set(device, outcome="pending", reason="offline")
                continue
            rid, kind, cmd = _model_command(args, r.data["pipeline"], raw, data_b64)
            if not client.send(f"{p}/{device}/cmd/model/{kind}", json.dumps(cmd).encode()):
                r.set(device, outcome="failed", reason="the broker did not take the command")
                continue
            r.set(device, outcome="sent", sent=time.time(), request_id=rid)
            to_wait.append(device)
        _wait_wave(args, r, fleet, verdicts, i, wave, to_wait)
        failed = [d for d in wave if r.devices[d]["outcome"] == "failed"]
        counted = [d for d in wave if r.devices[d]["outcome"] != "pending"]
        allowed = limit * len(counted) if share else limit
        print(f"wave {i}: {_bar(len(counted) - len(failed), len(wave))} active, "
              f"{len(failed)} failed, "
              f"{sum(1 for d in wave if r.devices[d]['outcome'] == 'pending')} pending")
        if len(failed) > allowed:
            r.data["halted"] = {"wave": i, "failed": failed,
                                "reason": f"{len(failed)} failures in wave {i} exceed "
                                          f"--max-failures {args.max_failures}"}
            r.save()
            print(f"HALTED: {r.data['halted']['reason']}")
            if key is not None:
                _rollback(args, r, client, fleet, key)
    if args.include_offline and not r.data.get("halted"):
        _catch_up_offline(args, r, fleet, client, verdicts, raw, data_b64)
    r.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r.save()
    return _report(args, r)


def _wait_wave(args: argparse.Namespace, r: Rollout, fleet: Fleet, verdicts: _Verdicts,
               i: int, wave: list[str], to_wait: list[str]) -> None:
    deadline = time.monotonic() + args.wave_timeout
    waiting = set(to_wait)
    last = -1
    while waiting:
        for device in sorted(waiting):
            v = verdicts.get(device)
            rid = r.devices[device].get("request_id")
            with fleet.lock:
                reply = fleet.replies.get(rid) if rid else None
            if v is not None:
                r.set(device, outcome="active" if v[0] == "active" else "failed",
                      reason=v[1])
                waiting.discard(device)
            elif reply is not None and not reply.get("ok"):
                r.set(device, outcome="failed", reason=str(reply.get("error")))
                waiting.discard(device)
        done = len(wave) - len(waiting)
        if done != last and sys.stderr.isatty():
            print(f"\rwave {i}: {_bar(done, len(wave))}", end="", file=sys.stderr, flush=True)
        last = done
        if not waiting:
            break
        if time.monotonic() >= deadline:
            for device in waiting:
                r.set(device, outcome="failed",
                      reason=f"no verdict within --wave-timeout {args.wave_timeout:g} s")
            break
        verdicts.changed.wait(0.2)
        verdicts.changed.clear()
    if sys.stderr.isatty():
        print(file=sys.stderr)


def _rollback(args: argparse.Namespace, r: Rollout, client: Any, fleet: Fleet,
              key: Any) -> None:
    """A signed rollback to every touched device whose retained state is the new model."""
    # imported here: start-up (measured: at the top, importing this module 0.65 -> 2.3 s)
    from edge_agent.signing import sign_command

    snap = {d.device: d for d in fleet.snapshot()}
    for device, entry in r.devices.items():
        if entry["sent"] is None:
            continue
        if not _on_target(snap.get(device), r.data["pipeline"], r.data["sha256"]):
            continue
        rid = uuid.uuid4().hex
        cmd = sign_command({"request_id": rid, "pipeline": r.data["pipeline"],
                            "command": "rollback", "device": device}, key)
        ok = client.send(f"{args.topic_prefix}/{device}/cmd/rollback", json.dumps(cmd).encode())
        r.set(device, outcome="rolled_back_by_operator" if ok else entry["outcome"],
              reason="rollout halted: rolled back" if ok else "rollback not sent")
        print(f"{device}: rollback {'sent' if ok else 'NOT sent'}")


def _catch_up_offline(args: argparse.Namespace, r: Rollout, fleet: Fleet, client: Any,
                      verdicts: _Verdicts, raw: dict[str, Any], data_b64: str | None) -> None:
    """With --include-offline: send to pending devices as they come back (up to one
    --wave-timeout), then wait for their verdicts."""
    pending = [d for d, e in r.devices.items() if e["outcome"] == "pending"]
    deadline = time.monotonic() + args.wave_timeout
    while pending and time.monotonic() < deadline:
        snap = {d.device: d for d in fleet.snapshot()}
        back = [d for d in pending if snap.get(d) is not None and snap[d].online]
        for device in back:
            pending.remove(device)
            rid, kind, cmd = _model_command(args, r.data["pipeline"], raw, data_b64)
            if client.send(f"{args.topic_prefix}/{device}/cmd/model/{kind}",
                           json.dumps(cmd).encode()):
                r.set(device, outcome="sent", sent=time.time(), request_id=rid)
                _wait_wave(args, r, fleet, verdicts, 0, [device], [device])
        time.sleep(0.5)


def _report(args: argparse.Namespace, r: Rollout) -> int:
    outcomes: dict[str, int] = {}
    print("device outcomes:")
    for device, e in sorted(r.devices.items(), key=lambda kv: (kv[1]["wave"], kv[0])):
        outcomes[e["outcome"]] = outcomes.get(e["outcome"], 0) + 1
        print(f"  wave {e['wave']}  {device}: {e['outcome']}"
              + (f" ({e['reason']})" if e.get("reason") else ""))
    ok = all(e["outcome"] == "active" for e in r.devices.values())
    report = {**r.data, "outcomes": outcomes, "complete": ok}
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n", "utf-8")
    print(("COMPLETE: " if ok else "INCOMPLETE: ") +
          ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 0 if ok else 1


def _model_command(args: argparse.Namespace, pipeline: str, raw: Any,
                   data_b64: str | None) -> tuple[str, str, dict[str, Any]]:
    """``(request_id, kind, command)`` of the update (or, with ``--shadow``, the shadow
    command, after which the device promotes by the manifest's gate or rejects) for one
    device."""
    rid = uuid.uuid4().hex
    cmd: dict[str, Any] = {"request_id": rid, "pipeline": pipeline, "manifest": raw}
    if data_b64 is not None:
        cmd["data"] = data_b64
    if getattr(args, "shadow", False):
        cmd["every"] = args.shadow_every
        return rid, "shadow", cmd
    return rid, "update", cmd
