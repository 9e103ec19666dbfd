"""Real-world checks of a valid config, shared by ``check-config`` and the agent's start-up.

Each problem is one line ``FILE:LINE key.path: what is wrong (what to do)``; the caller raises
them together as a :class:`~edge_agent.errors.ConfigError` (exit 78).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, load_config, locate
from edge_agent.errors import ConfigError, EdgeAgentError, ModelError, PluginUnavailableError

logger = logging.getLogger(__name__)


def _readable(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        return f"file not found: {path}"
    except IsADirectoryError:
        return f"is a folder, not a file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def check_pipeline_model(config: AgentConfig, index: int, where: Any) -> list[str]:
    """Check one pipeline's model, labels and decoder; ``where(loc)`` locates a key."""
    from edge_agent.decoders.factory import create_decoder
    from edge_agent.decoders.labels import load_labels
    from edge_agent.runtime.interpreter import load_runtime

    p = config.pipelines[index]
    base = ("pipelines", index, "model")
    problem = _readable(p.model.path)
    if problem:
        return [f"{where((*base, 'path'))}: model {problem} (expected a .tflite file)"]
    labels = None
    if p.model.labels is not None:
        problem = _readable(p.model.labels)
        if problem:
            return [f"{where((*base, 'labels'))}: labels {problem} (expected a text file, "
                    "one label per line)"]
    try:
        labels = load_labels(p.model.labels)
    except (EdgeAgentError, OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{where((*base, 'labels'))}: cannot use labels file: {exc}"]
    try:
        runtime = load_runtime(p.model.path, threads=p.model.threads, delegate=p.model.delegate,
                               fallback_to_cpu=p.model.fallback_to_cpu)
    except ModelError as exc:
        key = "delegate" if "delegate" in str(exc) else "path"
        return [f"{where((*base, key))}: {exc}"]
    except PluginUnavailableError as exc:
        return [f"{where((*base, 'path'))}: {exc}"]
    try:
        create_decoder(p.model.decoder, runtime.signature, labels, p.model.options,
                       p.score_threshold)
    except (ModelError, PluginUnavailableError) as exc:
        return [f"{where((*base, 'decoder'))}: {exc}"]
    except (ValueError, TypeError, KeyError) as exc:
        return [f"{where((*base, 'decoder_options'))}: {exc}"]
    finally:
        runtime.close()
    return []


def check_source(config: AgentConfig, index: int, where: Any) -> list[str]:
    """Open and close one pipeline's source."""
    from edge_agent.sources.factory import create_source

    p = config.pipelines[index]
    source = None
    try:
        source = create_source(p.source)
        source.open()
    except (EdgeAgentError, OSError, ValueError) as exc:
        return [f"{where(('pipelines', index, 'source'))}: cannot open {p.source.type} source "
                f"{getattr(p.source, 'uri', '') or ''}: {exc}".replace("  ", " ")]
    finally:
        if source is not None:
            try:
                source.close()
            except Exception:
                logger.debug("source close failed", exc_info=True)
    return []


def check_files(config: AgentConfig, where: Any) -> list[str]:
    """Secrets, certificates and keys the config names must be readable."""
    problems: list[str] = []
    files: list[tuple[tuple[Any, ...], Path | None]] = [
        (("mqtt", "password_file"), config.mqtt.password_file),
        (("mqtt", "tls", "ca_certs"), config.mqtt.tls.ca_certs),
        (("mqtt", "tls", "certfile"), config.mqtt.tls.certfile),
        (("mqtt", "tls", "keyfile"), config.mqtt.tls.keyfile),
    ]
    files += [(("updates", "public_keys", i), k) for i, k in enumerate(config.updates.public_keys)]
    files += [(("commands", "public_keys", i), k)
              for i, k in enumerate(config.commands.public_keys)]
    for loc, path in files:
        if path is not None:
            problem = _readable(path)
            if problem:
                problems.append(f"{where(loc)}: {problem}")
    return problems


def check_view(config: AgentConfig, where: Any) -> list[str]:
    """The live view's token must be readable, and off loopback it must exist."""
    if not config.view.enabled:
        return []
    from edge_agent.view.server import access_problems, load_token

    try:
        token = load_token(config.view)
    except ConfigError as exc:
        return [f"{where(('view', 'token_file'))}: {p.split(': ', 1)[-1]}" for p in exc.problems]
    return [f"{where(('view', 'bind'))}: {p.split(': ', 1)[-1]}"
            for p in access_problems(config.view, token)]


def check_state_dir(config: AgentConfig, where: Any) -> list[str]:
    """The state folder must exist (or be creatable) and be writable."""
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        probe = config.state_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return [f"{where(('state_dir',))}: cannot write to {config.state_dir}: "
                f"{exc.strerror or exc} (create it or point state_dir elsewhere)"]
    return []


def preflight(config: AgentConfig, config_file: str | Path, *, open_sources: bool = True,
              state_dir: bool = True) -> list[str]:
    """Every real-world problem of ``config``, one line each (empty: all good)."""

    def where(loc: tuple[Any, ...]) -> str:
        return locate(config_file, loc)

    problems: list[str] = []
    if state_dir:
        problems += check_state_dir(config, where)
    problems += check_files(config, where)
    problems += check_view(config, where)
    for i in range(len(config.pipelines)):
        problems += check_pipeline_model(config, i, where)
        if open_sources:
            problems += check_source(config, i, where)
    return problems


def cmd_check_config(args: argparse.Namespace) -> int:
    """``edge-agent check-config -c FILE``: exit 0, or 78 with one line per problem."""
    config, path = load_config(args.config)
    if not args.no_preflight:
        problems = preflight(config, path, state_dir=False)
        if problems:
            raise ConfigError(problems)
    print(f"{path}: ok ({len(config.pipelines)} pipeline"
          f"{'s' if len(config.pipelines) != 1 else ''}: "
          f"{', '.join(p.name for p in config.pipelines)})")
    return 0
