"""Operator commands: ``edge-agent model keygen | sign | verify | push | status | rollback``.

These run on the operator's machine, not on the device. ``push``, ``status`` and ``rollback``
talk to the broker through :class:`edge_agent.mqtt.subscriber.Subscriber` (only
``edge_agent.mqtt`` imports paho).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.digest import sha256_file
from edge_agent.errors import UpdateError
from edge_agent.signing import (
    generate_key_pair,
    load_private_key,
    load_public_keys,
    sign_command,
)
from edge_agent.updater.manifest import (
    Manifest,
    TargetFile,
    build_manifest,
    parse_manifest,
    verify_manifest,
)

if TYPE_CHECKING:
    from edge_agent.mqtt.subscriber import Subscriber


def cmd_keygen(args: argparse.Namespace) -> int:
    """``model keygen --out DIR``: write signing.key (0600) and signing.pub."""
    priv, pub, kid = generate_key_pair(args.out)
    print(f"private key: {priv} (mode 0600; keep it off the devices)")
    print(f"public key:  {pub} (list it in updates.public_keys on the devices)")
    print(f"key_id:      {kid}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """``model sign FILE --key KEY --name N --version V [--url] [--labels] [--for-pipeline P]
    [--for-device D] [--for-group G] [--decoder KIND] [--shadow-frames N --shadow-min-recall R
    --shadow-min-precision P --shadow-max-latency-ratio L] --out MANIFEST``."""
    model = Path(args.file)
    if not model.is_file():
        raise UpdateError(f"{model}: no such file")
    labels = Path(args.labels).read_text(encoding="utf-8") if args.labels else None
    extra: dict[str, Any] = {}
    for bound in ("pipeline", "device", "group"):
        names = getattr(args, f"for_{bound}", None)
        if names:
            extra[bound] = names[0] if len(names) == 1 else list(names)
    if getattr(args, "decoder", None):
        extra["decoder"] = args.decoder
    gate = {k: getattr(args, f"shadow_{k}", None)
            for k in ("frames", "min_recall", "min_precision", "max_latency_ratio")}
    if any(v is not None for v in gate.values()):
        # imported here: start-up (measured: at the top, importing this module 0.46 -> 4.0 s)
        from edge_agent.shadow import ShadowGate

        if gate["frames"] is None:
            raise UpdateError("--shadow-frames is needed with the other --shadow-* options")
        shadow = {k: v for k, v in gate.items() if v is not None}
        ShadowGate.parse(shadow, "--shadow-*")  # the device's own check, before signing
        extra["shadow"] = shadow
    targets: dict[str, TargetFile] = {}
    for spec in getattr(args, "target_file", None) or []:
        name, sep, rest = spec.partition("=")
        file, _, url = rest.partition("@")
        if not sep or not name or not file:
            raise UpdateError(f"--target-file {spec!r}: expected NAME=FILE or NAME=FILE@URL")
        path = Path(file)
        if not path.is_file():
            raise UpdateError(f"--target-file {name}: {path}: no such file")
        targets[name] = TargetFile(sha256_file(path), path.stat().st_size, url or None)
    manifest = build_manifest(
        name=args.name, version=int(args.version), sha256=sha256_file(model),
        size=model.stat().st_size, key=load_private_key(args.key), url=args.url, labels=labels,
        allow_downgrade=bool(getattr(args, "allow_downgrade", False)), targets=targets,
        extra=extra or None)
    out = Path(args.out)
    out.write_text(manifest.to_json() + "\n", encoding="utf-8")
    print(f"{out}: {manifest.name} v{manifest.version} sha256 {manifest.sha256} "
          f"size {manifest.size} key_id {manifest.key_id}")
    return 0


def _load_manifest_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UpdateError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
    return dict(parse_manifest(text).raw)


def cmd_verify(args: argparse.Namespace) -> int:
    """``model verify MANIFEST --pub KEY.pub [--file MODEL]``: signature, and size/sha256."""
    manifest = parse_manifest(_load_manifest_file(args.manifest))
    kid = verify_manifest(manifest, load_public_keys(args.pub))
    print(f"signature OK: {manifest.name} v{manifest.version} signed by {kid}")
    if args.file:
        _check_file(Path(args.file), manifest.size, manifest.sha256)
        print(f"file OK: {args.file} matches size {manifest.size} and sha256")
    return 0


def _check_file(path: Path, size: int, sha: str) -> None:
    if not path.is_file():
        raise UpdateError(f"{path}: no such file")
    if path.stat().st_size != size:
        raise UpdateError(f"{path} is {path.stat().st_size} bytes, the manifest says {size}")
    if sha256_file(path) != sha:
        raise UpdateError(f"{path} does not match the manifest's sha256")


def _subscriber(args: argparse.Namespace, topics: list[str],
                on_message: Callable[[str, bytes, bool], None]) -> tuple[Subscriber, str]:
    """A subscriber for the ``--broker`` family of options (TLS, ``--username``,
    ``--password-file`` or ``$CREDENTIALS_DIRECTORY``), and ``host:port`` for messages."""
    # imported here: start-up (measured: at the top, importing this module 0.46 -> 4.0 s)
    from edge_agent.consumer.options import broker_from_args
    from edge_agent.mqtt.subscriber import Subscriber  # only edge_agent.mqtt imports paho

    opts = broker_from_args(args)
    tls = None
    if opts.tls_ca is not None:
        tls = (str(opts.tls_ca), str(opts.tls_cert) if opts.tls_cert else None,
               str(opts.tls_key) if opts.tls_key else None)
    sub = Subscriber(opts.host, opts.port, topics, on_message, tls=tls,
                     username=opts.username, password=opts.password, protocol=opts.protocol)
    return sub, f"{opts.host}:{opts.port}"


class _Watcher:
    """Shows a device's state messages as they arrive and ends on the reply to our request.

    State messages carry no request id (the contract's payload), so only live ones (not the
    retained message from before) of the pipeline are shown; the reply, which does carry the
    request id, decides the outcome.
    """

    def __init__(self, request_id: str, single: bool, total: int | None = None) -> None:
        self.request_id = request_id
        self.single = single
        self.total = total
        self.outcomes: dict[str, int] = {}
        self.done = threading.Event()
        self._bar = False

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if topic.endswith("/cmd/reply"):
            if msg.get("request_id") != self.request_id:
                return
            device = topic.split("/")[-3]
            ok = bool(msg.get("ok"))
            self._line(f"{device}: {'done' if ok else 'failed: ' + str(msg.get('error'))}")
            self.outcomes[device] = 0 if ok else 1
            if self.single:
                self.done.set()
            return
        if retained:
            return  # the state from before this request
        self._state(topic.split("/")[-4], msg)

    def _state(self, device: str, msg: dict[str, Any]) -> None:
        state = str(msg.get("state"))
        progress = msg.get("progress")
        if state == "downloading" and progress is not None:
            if isinstance(progress, dict):  # {bytes, total}
                fraction = progress.get("bytes", 0) / max(1, progress.get("total") or 1)
            else:
                fraction = float(progress)
            width = 30
            filled = int(width * min(1.0, fraction))
            size = f" of {self.total / 1e6:.1f} MB" if self.total else ""
            print(f"\r{device}: downloading [{'#' * filled}{'.' * (width - filled)}] "
                  f"{100 * fraction:5.1f}%{size}", end="", file=sys.stderr, flush=True)
            self._bar = True
            return
        reason = f": {msg['reason']}" if msg.get("reason") else ""
        self._line(f"{device}: {state} {msg.get('name')} v{msg.get('version')}{reason}")

    def _line(self, text: str) -> None:
        if self._bar:
            print(file=sys.stderr)
            self._bar = False
        print(text, flush=True)


def _run_request(args: argparse.Namespace, topic: str, payload: bytes, watch: list[str],
                 request_id: str, single: bool, total: int | None = None) -> int:
    watcher = _Watcher(request_id, single, total)
    sub, where = _subscriber(args, watch, watcher.on_message)
    try:
        if not sub.start(timeout=min(10.0, args.timeout)):
            raise UpdateError(f"cannot reach the broker at {where}")
        if not sub.publish(topic, payload, qos=1):
            raise UpdateError(f"the broker did not accept the command on {topic}")
        finished = watcher.done.wait(args.timeout)
    finally:
        sub.stop()
    if not watcher.outcomes:
        print(f"timed out after {args.timeout:g} s without an answer", file=sys.stderr)
        return 1
    if single and not finished:
        return 1
    return 0 if all(v == 0 for v in watcher.outcomes.values()) else 1


def cmd_push(args: argparse.Namespace) -> int:
    """``model push MANIFEST --pipeline P (--device D | --group G) --broker H[:P] [--file]``.

    Shows the device's state messages as they arrive; exit 0 when the device replies that
    the update is ``active``, 1 when it is rejected, the command is refused (e.g. busy) or on
    timeout. A group push waits the whole ``--timeout`` and succeeds when every device that
    answered went active. The watch that follows ``active`` may still roll the model back:
    ``model status`` shows it.
    """
    manifest, rid, command, topic, watch = _model_request(args, "update", {}, "push")
    print(f"pushing {manifest.name} v{manifest.version} ({manifest.size} bytes, "
          f"{'inline' if args.file else 'by url'}) to {topic}")
    return _run_request(args, topic, json.dumps(command).encode(), watch, rid,
                        single=bool(args.device), total=manifest.size)


def _model_request(args: argparse.Namespace, kind: str, extra: dict[str, Any], verb: str
                   ) -> tuple[Manifest, str, dict[str, Any], str, list[str]]:
    """What ``model push`` and ``model shadow`` send: ``(manifest, request_id, command, topic,
    topics to watch)`` for ``cmd/model/<kind>`` to ``--device`` or ``--group``, with the
    model bytes inline when ``--file`` is given (checked against the manifest first)."""
    raw = _load_manifest_file(args.manifest)
    manifest = parse_manifest(raw)
    rid = uuid.uuid4().hex
    command: dict[str, Any] = {"request_id": rid, "pipeline": args.pipeline, "manifest": raw,
                               **extra}
    if args.file:
        path = Path(args.file)
        _check_file(path, manifest.size, manifest.sha256)
        command["data"] = base64.b64encode(path.read_bytes()).decode()
    elif not manifest.url:
        raise UpdateError(f"the manifest has no url: sign it with --url or {verb} with --file")
    p = args.topic_prefix
    if args.device:
        topic = f"{p}/{args.device}/cmd/model/{kind}"
        watch = [f"{p}/{args.device}/model/{args.pipeline}/state", f"{p}/{args.device}/cmd/reply"]
    else:
        topic = f"{p}/group/{args.group}/cmd/model/{kind}"
        watch = [f"{p}/+/model/{args.pipeline}/state", f"{p}/+/cmd/reply"]
    return manifest, rid, command, topic, watch


def cmd_shadow(args: argparse.Namespace) -> int:
    """``model shadow MANIFEST --pipeline P (--device D | --group G) --broker H[:P] [--file]``.

    The device verifies and validates the candidate like an update, keeps it apart from the
    active model and runs it on sampled frames; its figures go out retained on
    ``P/D/model/<pipeline>/shadow``. Exit 0 when the device replies that shadowing started.
    A manifest's ``shadow`` gate (``model sign --shadow-*``) lets the device promote or
    reject by itself; else ``model promote``.
    """
    manifest, rid, command, topic, watch = _model_request(
        args, "shadow", {"every": args.every, "when_idle": args.when_idle}, "send it")
    print(f"shadowing {manifest.name} v{manifest.version} on every "
          f"{args.every} frame(s){' when idle' if args.when_idle else ''} via {topic}")
    return _run_request(args, topic, json.dumps(command).encode(), watch, rid,
                        single=bool(args.device), total=manifest.size)


def cmd_promote(args: argparse.Namespace) -> int:
    """``model promote --device D --pipeline P --broker H[:P] --key KEY [--sha256 S]``: make
    the shadow candidate active through the normal swap and watch (signed command)."""
    key = load_private_key(args.key)
    rid = uuid.uuid4().hex
    body: dict[str, Any] = {"request_id": rid, "pipeline": args.pipeline,
                            "command": "model/promote", "device": args.device}
    if args.sha256:
        body["sha256"] = args.sha256.lower()
    command = sign_command(body, key)
    p = f"{args.topic_prefix}/{args.device}"
    watch = [f"{p}/model/{args.pipeline}/state", f"{p}/cmd/reply"]
    return _run_request(args, f"{p}/cmd/model/promote", json.dumps(command).encode(), watch,
                        rid, single=True)


def cmd_status(args: argparse.Namespace) -> int:
    """``model status --device D --broker H[:P]``: the retained model state of each pipeline."""
    states: dict[str, dict[str, Any]] = {}
    last = [time.monotonic()]

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if isinstance(msg, dict):
            states[topic.split("/")[-2]] = msg
            last[0] = time.monotonic()

    sub, where = _subscriber(args, [f"{args.topic_prefix}/{args.device}/model/+/state"],
                             on_message)
    try:
        if not sub.start(timeout=args.timeout):
            raise UpdateError(f"cannot reach the broker at {where}")
        deadline = time.monotonic() + args.timeout
        # Retained messages arrive right after SUBACK: stop shortly after the last one.
        while time.monotonic() < deadline and not (states and time.monotonic() - last[0] > 0.5):
            time.sleep(0.05)
    finally:
        sub.stop()
    if not states:
        print(f"no model state from device {args.device} (is it running and connected?)")
        return 1
    def ref(model: Any) -> str:
        if not isinstance(model, dict):
            return "none"
        return f"{model.get('name')} v{model.get('version')} {str(model.get('sha256', ''))[:12]}"

    for pipeline, s in sorted(states.items()):
        print(f"{pipeline}: {s.get('state')}  active {ref(s.get('active'))}  previous "
              f"{ref(s.get('previous'))}" + (f"  reason: {s['reason']}" if s.get("reason") else ""))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """``model rollback --device D --pipeline P --broker H[:P] --key KEY``: signed command."""
    key = load_private_key(args.key)
    rid = uuid.uuid4().hex
    # "command" and "device" bind the signature to this command on this device only.
    command = sign_command({"request_id": rid, "pipeline": args.pipeline,
                            "command": "rollback", "device": args.device}, key)
    p = f"{args.topic_prefix}/{args.device}"
    watch = [f"{p}/model/{args.pipeline}/state", f"{p}/cmd/reply"]
    return _run_request(args, f"{p}/cmd/rollback", json.dumps(command).encode(), watch, rid,
                        single=True)
