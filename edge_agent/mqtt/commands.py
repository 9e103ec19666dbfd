"""The command channel: parse, validate, authenticate and dispatch ``P/D/cmd/...`` messages.

Commands arrive on ``P/D/cmd/<name>`` and ``P/group/<g>/cmd/<name>``. Each is JSON checked
against its schema. Commands that change the device (rollback, config, restart) carry an
Ed25519 signature over the canonical JSON of the payload without ``signature`` (sorted keys,
no spaces, UTF-8), a ``ts`` (seconds since the epoch) within ``commands.max_skew_s`` and a
``nonce`` never seen before (persisted in ``state_dir/command_nonces.json`` so a restart
opens no replay window). A model update is authenticated by its signed manifest instead.

Optional fields bind a signed command to its target: ``command`` (must equal the topic's
command), ``device`` (must equal this device) and ``group`` (must equal the topic's group).

:class:`CommandDispatcher` never raises into paho's network thread: the subscription handler
checks the size against the command's own limit (:func:`command_limit`: kilobytes for every
command but an inline model update) before anything is parsed, and queues; the payload is
parsed once, top-level field types and lengths are checked before JSON Schema runs (so no
error message ever carries a huge value), then the schema. A worker thread parses,
verifies, calls the handler and replies. Every message whose ``request_id`` can be read gets
exactly one reply.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import jsonschema
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.config import AgentConfig, CommandsConfig
from edge_agent.contract.commands import BY_NAME
from edge_agent.contract.topics import Topics
from edge_agent.mqtt.signed import (
    NONCE_FILE,
    NonceCache,
    canonical_json,
    key_id_of,
    load_public_key,
    sign_command,
)

__all__ = [
    "DEFERRED", "NONCE_FILE", "SCHEMAS", "Command", "CommandDispatcher", "CommandError",
    "ReplyData", "canonical_json", "key_id_of", "load_public_key", "sign_command",
]

logger = logging.getLogger(__name__)

DEFERRED: Literal["deferred"] = "deferred"
"""A handler returns this when it will reply later itself (model updates: the updater)."""

ReplyData = Literal["deferred"] | bool | None
"""What a handler returns: None -> the dispatcher replies ok; DEFERRED, True or False -> the
handler replies itself (the updater's convention: True accepted and queued, False busy and
already replied)."""
Reply = Callable[[str | None, bool, str | None], None]


SCHEMAS: dict[str, dict[str, Any]] = {name: spec.schema for name, spec in BY_NAME.items()}
"""JSON Schema per command name (the part of the topic after ``cmd/``), from the contract."""

_VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in SCHEMAS.items()}

SIGNED_COMMANDS = frozenset(name for name, spec in BY_NAME.items() if spec.signed)

PACKET_OVERHEAD = 64 * 1024
"""Room for the topic and properties of a command packet, above its payload."""


def command_limit(name: str, cfg: CommandsConfig) -> int:
    """The largest payload accepted for command ``name`` (the part of the topic after cmd/).

    An inline model update may be large (``max_payload_bytes``); a config command is a whole
    config.yaml (``max_config_bytes``); every other command, known or not, is kilobytes
    (``max_command_bytes``). ``max_payload_bytes`` caps them all, and a contract limit
    (``CommandSpec.max_bytes``) lowers one further.
    """
    if name in ("model/update", "model/shadow"):
        limit = cfg.max_payload_bytes
    elif name == "config":
        limit = min(cfg.max_config_bytes, cfg.max_payload_bytes)
    else:
        limit = min(cfg.max_command_bytes, cfg.max_payload_bytes)
    spec = BY_NAME.get(name)
    if spec is not None and spec.max_bytes is not None:
        limit = min(limit, spec.max_bytes)
    return limit


def max_packet_size(cfg: CommandsConfig) -> int:
    """The MQTT 5 Maximum Packet Size the agent announces at CONNECT."""
    return max(cfg.max_payload_bytes, cfg.max_config_bytes, cfg.max_command_bytes) \
        + PACKET_OVERHEAD


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "object": (dict,), "number": (int, float), "integer": (int,),
    "array": (list,), "boolean": (bool,),
}


def _precheck(obj: Any, schema: Mapping[str, Any]) -> None:
    """Top-level shape, types and string lengths, with messages that never quote a value.

    jsonschema formats the offending value into its messages (``repr`` of a 60 MB array);
    this runs first, so only values already of the right type and size reach it.
    """
    if not isinstance(obj, dict):
        raise CommandError(f"invalid: (payload): a JSON object is required, got "
                           f"{type(obj).__name__}")
    props = schema["properties"]
    for key, value in obj.items():
        spec = props.get(key)
        if spec is None:
            raise CommandError(f"invalid: (payload): unexpected field {str(key)[:64]!r}")
        want = _JSON_TYPES.get(spec.get("type", ""), (object,))
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            raise CommandError(f"invalid: {key}: must be of type {spec['type']}, got "
                               f"{type(value).__name__}")
        if isinstance(value, str) and len(value) > spec.get("maxLength", len(value)):
            raise CommandError(f"invalid: {key}: longer than {spec['maxLength']} characters")


class Subscribable(Protocol):
    """What commands (and Home Assistant's status) arrive through: the MqttTransport."""

    def subscribe(self, topic_filter: str, handler: Callable[[str, bytes], None]) -> None:
        """Call ``handler(topic, payload)`` for every message on ``topic_filter``."""


class CommandError(Exception):
    """A command was refused; the message goes into the error reply.

    Attributes:
        request_id: the command's request_id when it could be read (for the reply).
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Command:
    """A validated (and, where required, authenticated) command.

    Attributes:
        name: ``model/update``, ``rollback``, ``config`` or ``restart``.
        request_id: the operator's id, echoed in the reply.
        payload: the whole JSON object.
        topic: where it arrived.
        group: the group it was addressed to (None: this device directly).
        key_id: the key that signed it (None: unsigned).
    """

    name: str
    request_id: str
    payload: Mapping[str, Any]
    topic: str
    group: str | None = None
    key_id: str | None = None

    @property
    def pipeline(self) -> str | None:
        """The pipeline the command names, if any."""
        value = self.payload.get("pipeline")
        return value if isinstance(value, str) else None


# --------------------------------------------------------------------------- dispatcher

@dataclass
class _Counters:
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    busy: int = 0
    by_error: dict[str, int] = field(default_factory=dict)


class CommandDispatcher:
    """Turns command messages into handler calls and exactly one reply each.

    Args:
        config: the agent config (device id, topic prefix, groups, ``commands`` section).
        handlers: command name -> ``handler(Command)``; returns None (the dispatcher replies
            ok), DEFERRED/True/False (the handler replies itself, now or later) or raises (error
            reply with the exception's message).
        reply: ``reply(request_id, ok, error)``; request_id is None when it could not be read.
        state_dir: where the nonce cache lives (default ``config.state_dir``).
        queue_size: commands waiting for the worker; beyond it, a "busy" error reply.
        clock: seconds since the epoch (tests).
    """

    def __init__(self, config: AgentConfig, handlers: Mapping[str, Callable[[Command], ReplyData]],
                 reply: Reply, *, state_dir: Path | None = None, queue_size: int = 32,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cfg = config.commands
        self.topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.handlers = dict(handlers)
        self.reply = reply
        self.clock = clock
        paths = self.cfg.public_keys or config.updates.public_keys
        self.keys: dict[str, Ed25519PublicKey] = {}
        for path in paths:
            key = load_public_key(path)
            self.keys[key_id_of(key)] = key
        self.nonces = NonceCache(Path(state_dir or config.state_dir) / NONCE_FILE,
                                 self.cfg.max_skew_s)
        self.counters = _Counters()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None

    def topic_filters(self) -> list[str]:
        """What the agent subscribes ``on_message`` to: ``P/D/cmd/#`` and each group's."""
        return [self.topics.cmd_filter(),
                *(self.topics.group_cmd_filter(g) for g in self.config.mqtt.groups)]

    # ------------------------------------------------------------------ threads

    def attach(self, transport: Subscribable) -> None:
        """Subscribe :meth:`on_message` to every command filter and start the worker.

        Args:
            transport: an object with ``subscribe(topic_filter, handler)`` (MqttTransport).
        """
        for topic_filter in self.topic_filters():
            transport.subscribe(topic_filter, self.on_message)
        self.start()

    def start(self) -> None:
        """Start the worker thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Let the worker finish what is queued (up to ``timeout``) and stop it."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            logger.warning("command queue still full at stop")
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("command worker did not stop within %.1f s", timeout)
        self._thread = None

    def on_message(self, topic: str, payload: bytes) -> None:
        """The subscription handler: cheap checks, then queue (never raises, never blocks)."""
        try:
            if self.topics.parse_command(topic) is None:
                return  # our own replies on P/D/cmd/reply
            self.counters.received += 1
            where = self.topics.parse_command(topic)
            limit = command_limit(where.name if where is not None else "", self.cfg)
            if len(payload) > limit:
                self._refuse(None, f"oversized: payload of {len(payload)} bytes is over the "
                             f"limit of {limit} for this command", "oversized")
                return
            try:
                self._queue.put_nowait((topic, payload))
            except queue.Full:
                self.counters.busy += 1
                # peek only into small payloads: this runs on paho's network thread
                rid = _peek_request_id(payload) if len(payload) <= 64 * 1024 else None
                self._refuse(rid, "busy: too many commands queued, try again later", "busy")
        except Exception:
            logger.exception("command intake failed")

    def process_pending(self) -> int:
        """Handle what is queued on the calling thread (without a worker); returns how many."""
        n = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return n
            if item is not None:
                self.handle(*item)
                n += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.handle(*item)
            except Exception:
                logger.exception("command worker failed")

    # ------------------------------------------------------------------ processing

    def handle(self, topic: str, payload: bytes) -> None:
        """Process one command synchronously (the worker calls this; tests may too)."""
        if self.topics.parse_command(topic) is None:
            return
        try:
            command = self.parse(topic, payload)
            handler = self.handlers.get(command.name)
            if handler is None:
                raise CommandError(f"unavailable: command {command.name!r} is not handled "
                                   "on this device", command.request_id)
            try:
                result = handler(command)
            except CommandError as exc:
                exc.request_id = exc.request_id or command.request_id
                raise
            except Exception as exc:
                logger.warning("command handler for %s failed: %s", topic, type(exc).__name__)
                self._refuse(command.request_id, f"failed: {exc}", "handler")
                return
        except CommandError as exc:
            self._refuse(exc.request_id, str(exc), str(exc).split(":")[0][:20])
            return
        except Exception as exc:  # a payload no check foresaw: a reply, not a dead worker
            logger.warning("command on %s could not be processed: %s", topic,
                           type(exc).__name__)
            self._refuse(_peek_request_id(payload), f"invalid: {type(exc).__name__}",
                         "invalid")
            return
        self.counters.accepted += 1
        if result is None:
            self._send_reply(command.request_id, True, None)

    def parse(self, topic: str, payload: bytes) -> Command:
        """Validate and authenticate a command (the payload is parsed once).

        Raises:
            CommandError: why it is refused (goes into the reply), with the request_id when
                it could be read.
        """
        where = self.topics.parse_command(topic)
        if where is None:
            raise CommandError(f"not a command topic: {topic}")
        limit = command_limit(where.name, self.cfg)
        if len(payload) > limit:
            raise CommandError(f"oversized: payload of {len(payload)} bytes is over the limit "
                               f"of {limit} for this command")
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CommandError("malformed: payload is not JSON") from None
        rid = _request_id_of(obj)
        validator = _VALIDATORS.get(where.name)
        if validator is None:
            raise CommandError(f"unknown command: {where.name[:64]!r} (known: "
                               f"{', '.join(sorted(SCHEMAS))})", rid)
        try:
            if isinstance(obj, dict) and "request_id" in obj and rid is None:
                raise CommandError("invalid: request_id: 1-128 printable characters (no "
                                   "newlines or control characters)")
            _precheck(obj, SCHEMAS[where.name])
            error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
            if error is not None:
                path = ".".join(str(p) for p in error.absolute_path) or "(payload)"
                raise CommandError(f"invalid: {path}: {error.message[:200]}")
            key_id = None
            if where.name in SIGNED_COMMANDS and self.cfg.require_signature:
                key_id = self._authenticate(obj, where.name, where.group)
        except CommandError as exc:
            exc.request_id = rid
            raise
        return Command(where.name, obj["request_id"], obj, topic, where.group, key_id)

    def _authenticate(self, obj: dict[str, Any], name: str, group: str | None) -> str:
        for name_ in ("ts", "nonce", "key_id", "signature"):
            if name_ not in obj:
                raise CommandError(f"unsigned: {name!r} needs ts, nonce, key_id and signature")
        key = self.keys.get(obj["key_id"])
        if key is None:
            raise CommandError(f"unknown key: key_id {obj['key_id']!r} is not configured")
        try:
            signature = base64.b64decode(obj["signature"], validate=True)
            key.verify(signature, canonical_json(obj))
        except UnicodeEncodeError:
            raise CommandError("invalid: the command has text that is not valid UTF-8 (a lone "
                               "surrogate)") from None
        except (binascii.Error, ValueError, InvalidSignature):
            raise CommandError("bad signature: the signature does not verify") from None
        if obj.get("command", name) != name:
            raise CommandError(f"wrong target: signed for command {obj['command']!r}")
        if obj.get("device", self.config.device_id) != self.config.device_id:
            raise CommandError("wrong target: signed for another device")
        if "group" in obj and obj["group"] != group:
            raise CommandError("wrong target: signed for another group")
        now = self.clock()
        if abs(now - float(obj["ts"])) > self.cfg.max_skew_s:
            raise CommandError(f"stale: ts is more than {self.cfg.max_skew_s:g} s from the "
                               "device clock")
        if self.nonces.seen(obj["nonce"]):
            raise CommandError("replay: nonce was used before")
        self.nonces.add(obj["nonce"], float(obj["ts"]), now)
        return str(obj["key_id"])

    def _refuse(self, request_id: str | None, error: str, kind: str) -> None:
        self.counters.rejected += 1
        self.counters.by_error[kind] = self.counters.by_error.get(kind, 0) + 1
        n = self.counters.by_error[kind]
        if n <= 10 or n & (n - 1) == 0:  # the first ten per reason, then at powers of two
            logger.info("command %s refused: %s (%d refused for this reason so far)",
                        request_id, error[:200], n)
        self._send_reply(request_id, False, error)

    def _send_reply(self, request_id: str | None, ok: bool, error: str | None) -> None:
        try:
            self.reply(request_id, ok, error)
        except Exception:
            logger.exception("command reply failed")


def _request_id_of(obj: Any) -> str | None:
    """The request_id of a decoded payload when it is one that is safe to log and echo: a
    string of 1-128 printable characters (a newline in it would forge log lines)."""
    if isinstance(obj, dict):
        value = obj.get("request_id")
        if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
            return value
    return None


def _peek_request_id(payload: bytes) -> str | None:
    """The request_id of a payload if it is a JSON object with a safe one, else None."""
    try:
        return _request_id_of(json.loads(payload))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
