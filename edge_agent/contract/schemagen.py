"""Generate ``edge_agent/schemas`` and ``docs/schemas`` (the subscriber's copy) from the contract.

``edge_agent/schemas/<kind>.json`` is each payload's JSON Schema, generated from its typed
model in :mod:`edge_agent.contract.payloads` (the agent loads these files; it never imports
the generator). Each ``docs/schemas`` message document is that schema with an
``x-edge-agent`` object saying what the contract declares about the message (topic pattern,
retained, durable, QoS, size limit), so the docs cannot drift from what the guard enforces.
Each command document (``cmd_<name>.json``) is the schema the command channel validates with,
and its topics, signing and size limit. ``model_manifest.json`` is the signed model manifest's
schema, from :mod:`edge_agent.contract.manifest`.
A test fails when either folder is stale.

Run: ``python -m edge_agent.contract.schemagen`` (writes both folders).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.contract import manifest
from edge_agent.contract.commands import COMMANDS, CommandSpec
from edge_agent.contract.messages import SPECS, MessageSpec
from edge_agent.contract.payloads import documents

PACKAGE_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def _contract(spec: MessageSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": spec.kind, "topic": spec.topic, "retained": spec.retained,
        "durable": spec.durable, "qos": "mqtt.qos" if spec.qos is None else spec.qos,
        "max_bytes": spec.limit,
    }
    if spec.meta_limit is not None:
        out["topic_meta"] = spec.topic + "/meta"
        out["meta_max_bytes"] = spec.meta_limit
    return out


def _text(doc: object) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def render_package() -> dict[str, str]:
    """File name -> text of every payload schema in ``edge_agent/schemas``."""
    return {name: _text(doc) for name, doc in documents().items()}


def render() -> dict[str, str]:
    """File name -> text of every document in ``docs/schemas``."""
    out: dict[str, str] = {}
    payloads = documents()
    for spec in SPECS.values():
        schema: dict[str, Any] = dict(payloads[spec.schema_file])
        schema["x-edge-agent"] = _contract(spec)
        out[spec.schema_file] = _text(schema)
    for command in COMMANDS:
        out[command.file] = json.dumps(_command(command), indent=2, ensure_ascii=False) + "\n"
    out[manifest.SCHEMA_FILE] = json.dumps(manifest.json_schema(), indent=2,
                                           ensure_ascii=False) + "\n"
    return out


def _command(spec: CommandSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://edge-agent.dev/schemas/{spec.file}",
        "title": spec.title,
        **spec.schema,
    }
    doc["x-edge-agent"] = {
        "command": spec.name, "aliases": list(spec.aliases),
        "topics": [f"{{prefix}}/{{device}}/cmd/{n}" for n in (spec.name, *spec.aliases)]
        + [f"{{prefix}}/group/{{group}}/cmd/{n}" for n in (spec.name, *spec.aliases)],
        "signed": spec.signed,
        "max_bytes": "commands.max_payload_bytes" if spec.max_bytes is None else spec.max_bytes,
    }
    return doc


def write(directory: Path, texts: dict[str, str] | None = None) -> list[Path]:
    """Write every document (default: the docs') into ``directory``; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in (render() if texts is None else texts).items():
        path = directory / name
        path.write_text(text, "utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in [*write(PACKAGE_SCHEMAS, render_package()),
              *write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"))]:
        print(p)
