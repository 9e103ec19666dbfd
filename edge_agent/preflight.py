"""The real-world checks of a valid config: one set, shared by ``check-config``, the agent's
start-up (and reload) and ``edge-agent doctor``.

Each check returns :class:`Finding` objects: the config key it is about, ``ok``, ``warn`` or
``fail``, what was found and what to do. :func:`preflight` turns the failures into one line each,
``FILE:LINE key.path: what is wrong (what to do)``, which the caller raises together as a
:class:`~edge_agent.errors.ConfigError` (exit 78); the doctor shows every finding as a row.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from edge_agent.config import AgentConfig, PipelineConfig, fixed_threads, load_config, locate
from edge_agent.decoders.factory import create_decoder
from edge_agent.decoders.labels import LabelsMismatchError, load_labels
from edge_agent.errors import ConfigError, EdgeAgentError, ModelError, PluginUnavailableError
from edge_agent.runtime.targets import TargetRuntime, target_specs
from edge_agent.sources.factory import create_source
from edge_agent.view.server import access_problems, load_token

logger = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
OK: Final = "ok"
WARN: Final = "warn"
FAIL: Final = "fail"
SOURCE_OPEN_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check found.

    Attributes:
        name: the doctor's row name (``state_dir``, ``<pipeline>: model``, ...).
        key: the config key path it is about (for ``FILE:LINE key.path``).
        status: ``ok``, ``warn`` or ``fail`` (only failures stop a start).
        detail: what was found.
        fix: what to do about it (doctor rows).
    """

    name: str
    key: tuple[Any, ...]
    status: Status
    detail: str
    fix: str = ""


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


def check_pipeline_model(p: PipelineConfig, index: int = 0, *, each_target: bool = False,
                         keep: dict[str, TargetRuntime] | None = None) -> list[Finding]:
    """One pipeline's model, labels and decoder: the model loads as the agent loads it (the
    first of its execution targets that loads and passes a warm-up) and the decoder fits it.

    Args:
        p: the pipeline's config.
        index: its index in ``pipelines`` (for the key path).
        each_target: also load each execution target on its own (doctor: one
            ``<pipeline>: target <name>`` row per target, so a target behind a working one is
            checked too); only when the model has more than one.
        keep: when given and nothing failed, the loaded runtime is left open in it under the
            pipeline's name (the agent's start-up hands it to the pipeline instead of loading
            the model a second time); the caller closes what it does not use.
    """
    m = p.model
    base = ("pipelines", index, "model")
    model, decoder = f"{p.name}: model", f"{p.name}: decoder"
    fix_model = ("fix model.path (or run `edge-agent models fetch` for the default models), "
                 "or add a target that can run it")
    problem = _readable(m.path)
    if problem:
        return [Finding(model, (*base, "path"), FAIL,
                        f"model {problem} (expected a .tflite file)", fix_model)]
    if m.labels is not None:
        problem = _readable(m.labels)
        if problem:
            return [Finding(model, (*base, "labels"), FAIL, f"labels {problem} (expected a "
                            "text file, one label per line)", "fix model.labels")]
    try:
        labels = load_labels(m.labels)
    except (EdgeAgentError, OSError, UnicodeDecodeError, ValueError) as exc:
        return [Finding(model, (*base, "labels"), FAIL, f"cannot use labels file: {exc}",
                        "fix model.labels")]
    specs = target_specs(m)
    found: list[Finding] = []
    if each_target and len(specs) > 1:
        serving = None
        for spec in specs:
            row = f"{p.name}: target {spec.name}"
            try:
                one = TargetRuntime([spec], threads=fixed_threads(m),
                                    invoke_timeout_s=m.invoke_timeout_s,
                                    load_timeout_s=m.load_timeout_s)
            except PluginUnavailableError as exc:
                return [Finding(model, (*base, "path"), FAIL, str(exc),
                                "pip install ai-edge-litert")]
            except EdgeAgentError as exc:
                file = spec.path.name if spec.path is not None else "no model file"
                found.append(Finding(row, (*base, "targets"), WARN, f"{file}: {exc}",
                                     "attach or install the accelerator and its delegate "
                                     "library, or drop this target" if spec.library else
                                     "fix model.path (or run `edge-agent models fetch`)"))
                continue
            one.close()
            role = "would serve" if serving is None else "standby (a better target works)"
            serving = serving or spec.name
            found.append(Finding(row, (*base, "targets"), OK,
                                 f"loads and passes warm-up; {role}"))
    try:
        # the same arguments as load_bundle, so the agent's start-up can keep this runtime
        runtime = TargetRuntime(specs, threads=fixed_threads(m),
                                invoke_timeout_s=m.invoke_timeout_s,
                                load_timeout_s=m.load_timeout_s, reprobe_s=m.reprobe_s,
                                reprobe_max_s=m.reprobe_max_s)
    except ModelError as exc:
        key = "delegate" if "delegate" in str(exc) else "path"
        return [*found, Finding(model, (*base, key), FAIL, str(exc), fix_model)]
    except PluginUnavailableError as exc:
        return [*found, Finding(model, (*base, "path"), FAIL, str(exc), fix_model)]
    try:
        info = runtime.info
        detail = (f"{runtime.path.name} on {info.delegate or 'cpu'} ({info.backend} "
                  f"{info.backend_version}, {info.threads} threads)")
        if info.fallback_reason:
            found.append(Finding(model, (*base, "delegate"), WARN,
                                 f"{detail}; {info.fallback_reason}", "install or attach the "
                                 "delegate's hardware, or drop that target"))
        else:
            found.append(Finding(model, (*base, "path"), OK, detail))
        fix_decoder = ("set model.decoder (and decoder_options) to fit the model's outputs: "
                       "`edge-agent model inspect FILE` shows them")
        try:
            made = create_decoder(m.decoder, runtime.signature, labels, m.decoder_options,
                                  p.score_threshold)
        except LabelsMismatchError as exc:
            found.append(Finding(model, (*base, "labels"), FAIL, str(exc),
                                 "use the model's own label file (one name per class)"))
        except (ModelError, PluginUnavailableError) as exc:
            found.append(Finding(decoder, (*base, "decoder"), FAIL, str(exc), fix_decoder))
        except (ValueError, TypeError, KeyError) as exc:
            text = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
            found.append(Finding(decoder, (*base, "decoder_options"), FAIL, text, fix_decoder))
        else:
            found.append(Finding(decoder, (*base, "decoder"), OK,
                                 f"{made.kind} fits the model's outputs"))
    finally:
        if keep is not None and not any(f.status == FAIL for f in found):
            keep[p.name] = runtime
        else:
            runtime.close()
    return found


def check_source(p: PipelineConfig, index: int = 0,
                 timeout: float = SOURCE_OPEN_TIMEOUT_S) -> list[Finding]:
    """Open and close one pipeline's source, on a thread: a FIFO or a dead stream can block."""
    name, key = f"{p.name}: source", ("pipelines", index, "source")
    what = f"{p.source.type} source {getattr(p.source, 'uri', '') or ''}".strip()
    fix = ("check the source uri, the device's permissions (group video) and that nothing "
           "else holds it")
    result: list[Finding] = []

    def attempt() -> None:
        source = None
        try:
            source = create_source(p.source)
            source.open()
            result.append(Finding(name, key, OK, f"{what} opens"))
        except (EdgeAgentError, OSError, ValueError) as exc:
            result.append(Finding(name, key, FAIL, f"cannot open {what}: {exc}", fix))
        finally:
            if source is not None:
                try:
                    source.close()
                except Exception:  # a close error is not the finding
                    logger.debug("source close failed", exc_info=True)

    t = threading.Thread(target=attempt, name="preflight-source", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive() or not result:
        return [Finding(name, key, FAIL, f"{what} did not open within {timeout:.0f} s",
                        "check the camera or stream is reachable (a FIFO needs a writer)")]
    return result


def check_files(config: AgentConfig) -> list[Finding]:
    """Secrets, certificates and keys the config names must be readable."""
    files: list[tuple[tuple[Any, ...], Path | None]] = [
        (("mqtt", "password_file"), config.mqtt.password_file),
        (("mqtt", "tls", "ca_certs"), config.mqtt.tls.ca_certs),
        (("mqtt", "tls", "certfile"), config.mqtt.tls.certfile),
        (("mqtt", "tls", "keyfile"), config.mqtt.tls.keyfile),
    ]
    files += [(("updates", "public_keys", i), k) for i, k in enumerate(config.updates.public_keys)]
    files += [(("commands", "public_keys", i), k)
              for i, k in enumerate(config.commands.public_keys)]
    found: list[Finding] = []
    for loc, path in files:
        if path is not None:
            problem = _readable(path)
            name = ".".join(str(part) for part in loc)
            found.append(Finding(name, loc, FAIL, problem, "make it readable by the service "
                                 "user, or fix the path") if problem else
                         Finding(name, loc, OK, f"{path} is readable"))
    return found


def check_view(config: AgentConfig) -> list[Finding]:
    """The live view's token must be readable, and off loopback it must exist."""
    if not config.view.enabled:
        return []

    fix = "see the live view's access rules in README.md"
    try:
        token = load_token(config.view)
    except ConfigError as exc:
        return [Finding("view", ("view", "token_file"), FAIL, p.split(": ", 1)[-1], fix)
                for p in exc.problems]
    problems = access_problems(config.view, token)
    if not problems:
        return [Finding("view", ("view", "bind"), OK, f"{config.view.bind} with its access rules")]
    return [Finding("view", ("view", "bind"), FAIL, p.split(": ", 1)[-1], fix) for p in problems]


def check_state_dir(config: AgentConfig) -> list[Finding]:
    """The state folder must exist (or be creatable) and be writable."""
    d = config.state_dir
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return [Finding("state_dir", ("state_dir",), FAIL, f"cannot write to {d}: "
                        f"{exc.strerror or exc} (create it or point state_dir elsewhere)",
                        "create it, owned by the service user (install.sh does), or point "
                        "state_dir elsewhere")]
    return [Finding("state_dir", ("state_dir",), OK, f"{d} is writable")]


def findings(config: AgentConfig, *, open_sources: bool = True, state_dir: bool = True,
             keep: dict[str, TargetRuntime] | None = None) -> list[Finding]:
    """Every check of ``config``, in order: state folder, files, live view, then per pipeline
    its model and decoder and (with ``open_sources``) its source. ``keep``: see
    :func:`check_pipeline_model`."""
    found: list[Finding] = []
    if state_dir:
        found += check_state_dir(config)
    found += check_files(config)
    found += check_view(config)
    for i, p in enumerate(config.pipelines):
        found += check_pipeline_model(p, i, keep=keep)
        if open_sources:
            found += check_source(p, i)
    return found


def preflight(config: AgentConfig, config_file: str | Path, *, open_sources: bool = True,
              state_dir: bool = True, keep: dict[str, TargetRuntime] | None = None) -> list[str]:
    """Every real-world problem of ``config``, one ``FILE:LINE key.path: ...`` line each.
    ``keep``: see :func:`check_pipeline_model`."""
    return [f"{locate(config_file, f.key)}: {f.detail}"
            for f in findings(config, open_sources=open_sources, state_dir=state_dir,
                              keep=keep)
            if f.status == FAIL]


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
