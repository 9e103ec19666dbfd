"""Every command that enters the device, declared once.

Each :class:`CommandSpec` says where the command arrives (``P/D/cmd/<name>`` and
``P/group/<g>/cmd/<name>``), whether it must be signed (Ed25519 over the canonical JSON,
see :mod:`edge_agent.mqtt.signed`), its size limit and the JSON Schema its payload must
validate against. The command channel (:mod:`edge_agent.mqtt.commands`) reads all of it from
here; ``docs/schemas/cmd_<name>.json`` is generated from it (:mod:`edge_agent.contract.schemagen`).

Adding a command is: one spec here, one handler in the agent, one test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_ID = {"type": "string", "minLength": 1, "maxLength": 128}
_PIPELINE = {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}
_SIGNED = {
    "ts": {"type": "number"},
    "nonce": {"type": "string", "minLength": 8, "maxLength": 128},
    "key_id": {"type": "string", "minLength": 1, "maxLength": 64},
    "signature": {"type": "string", "minLength": 1, "maxLength": 256},
    "command": {"type": "string", "maxLength": 64},
    "device": {"type": "string", "maxLength": 64},
    "group": {"type": "string", "maxLength": 64},
}


@dataclass(frozen=True)
class CommandSpec:
    """What the contract says about one command.

    Attributes:
        name: the topic level(s) after ``cmd/`` (``model/update``, ``rollback``, ...).
        title: one line for the generated schema.
        required: payload keys besides ``request_id`` that must be present.
        properties: the payload's own keys and their JSON Schemas.
        signed: a signature is required (when ``commands.require_signature`` is on); a model
            update is authenticated by its signed manifest instead.
        max_bytes: a contract limit on the payload, below the config's (None: the config's
            alone: ``commands.max_payload_bytes`` for a model update, ``max_config_bytes``
            for config, ``max_command_bytes`` for every other command).
        aliases: further names the same command answers to.
    """

    name: str
    title: str
    required: tuple[str, ...]
    properties: dict[str, Any]
    signed: bool
    max_bytes: int | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def schema(self) -> dict[str, Any]:
        """The payload's JSON Schema (closed: unknown keys are refused)."""
        properties = {"request_id": _ID, **self.properties, **(_SIGNED if self.signed else {})}
        return {"type": "object", "required": ["request_id", *self.required],
                "properties": properties, "additionalProperties": False}

    @property
    def file(self) -> str:
        """The generated schema's file name in ``docs/schemas``."""
        return "cmd_" + self.name.replace("/", "_") + ".json"


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("model/update", "Install a model (authenticated by its signed manifest)",
                ("pipeline", "manifest"), {
                    "pipeline": _PIPELINE,
                    "manifest": {"type": "object"},
                    "url": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "data": {"type": "string"},
                    # per-target files of the manifest's targets: inline bytes (base64) or
                    # URLs, by target name; a device takes only those of its own targets
                    "target_data": {"type": "object", "maxProperties": 16,
                                    "additionalProperties": {"type": "string"}},
                    "target_urls": {"type": "object", "maxProperties": 16,
                                    "additionalProperties": {"type": "string", "minLength": 1,
                                                             "maxLength": 2048}},
                }, signed=False),
    CommandSpec("model/shadow", "Run a candidate model in shadow of the active one (verified "
                "and validated like an update, authenticated by its signed manifest)",
                ("pipeline", "manifest"), {
                    "pipeline": _PIPELINE,
                    "manifest": {"type": "object"},
                    "url": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "data": {"type": "string"},
                    # run on every Nth frame (default 5); when_idle: only while no frame
                    # waits for the active model
                    "every": {"type": "integer", "minimum": 1, "maximum": 10000},
                    "when_idle": {"type": "boolean"},
                }, signed=False),
    CommandSpec("model/promote", "Make the shadow candidate active (normal swap and watch)",
                ("pipeline",),
                {"pipeline": _PIPELINE,
                 # optional: the candidate meant; refused when the shadow is another one
                 "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                signed=True),
    CommandSpec("rollback", "Go back to the previous model of a pipeline", ("pipeline",),
                {"pipeline": _PIPELINE,
                 # optional: the model meant; refused when previous is another one
                 "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                signed=True, aliases=("model/rollback",)),
    CommandSpec("config", "Replace the whole config file (validated and preflighted first)",
                ("config",), {"config": {"type": "string", "minLength": 1}}, signed=True),
    CommandSpec("restart", "Stop cleanly and exit 75 so systemd restarts the agent", (),
                {"reason": {"type": "string", "maxLength": 256}}, signed=True),
)

BY_NAME: dict[str, CommandSpec] = {
    n: c for c in COMMANDS for n in (c.name, *c.aliases)
}
"""Every name a command answers to -> its spec."""
