"""Command-line options of ``collect`` and ``watch``.

Kept outside :mod:`edge_agent.consumer` so that building the CLI's parser (for every command,
``run`` included) does not import the consumer package and paho; the commands import their
modules when they run.
"""

from __future__ import annotations

import argparse

DEFAULT_PREFIX = "edge-agent"


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """Add ``--broker``, TLS, credentials, ``--mqtt-version`` and ``--topic-prefix`` to ``p``."""
    p.add_argument("--broker", required=True, metavar="HOST[:PORT]",
                   help="MQTT broker (port 1883, or 8883 with --tls-ca)")
    # --cafile/--cert/--keyfile: the names `model push` had before DESIGN.md named these
    p.add_argument("--tls-ca", "--cafile", dest="tls_ca", default=None, metavar="FILE",
                   help="CA certificate: use TLS")
    p.add_argument("--tls-cert", "--cert", dest="tls_cert", default=None, metavar="FILE",
                   help="client certificate")
    p.add_argument("--tls-key", "--keyfile", dest="tls_key", default=None, metavar="FILE",
                   help="client key")
    p.add_argument("--username", default=None)
    p.add_argument("--password-file", default=None, metavar="FILE",
                   help="file whose first line is the password")
    p.add_argument("--mqtt-version", default="5", choices=["5", "3.1.1"])
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX, metavar="P",
                   help="the devices' mqtt.topic_prefix (default: edge-agent)")


def add_collect_args(p: argparse.ArgumentParser) -> None:
    """The options of ``edge-agent collect``."""
    add_broker_args(p)
    p.add_argument("--db", default="sqlite:///edge-agent-results.sqlite", metavar="URL",
                   help="sqlite:///PATH (default sqlite:///edge-agent-results.sqlite) or "
                        "postgresql://USER@HOST/DB")
    p.add_argument("--share", default=None, metavar="NAME",
                   help="MQTT 5 shared subscription: collectors with the same NAME split the "
                        "messages between them")
    p.add_argument("--client-id", default=None,
                   help="persistent session id, unique per collector (default: "
                        "edge-agent-collect-<share>-<hostname>)")
    p.add_argument("--device", action="append", default=None, help="only this device "
                   "(repeatable)")
    p.add_argument("--pipeline", action="append", default=None, help="only this pipeline "
                   "(repeatable)")
    p.add_argument("--retire", action="store_true",
                   help="take the collector --client-id out of its share for good: store what "
                        "its session still holds, then end the session, and exit")
    p.add_argument("--batch-size", type=int, default=500, help="messages per transaction")
    p.add_argument("--queue-size", type=int, default=1000,
                   help="unacknowledged messages held in memory at most")
    p.add_argument("--stats-interval", type=float, default=60.0, metavar="S")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_watch_args(p: argparse.ArgumentParser) -> None:
    """The options of ``edge-agent watch``."""
    add_broker_args(p)
    p.add_argument("--device", action="append", default=None, help="only this device "
                   "(repeatable)")
    p.add_argument("--pipeline", action="append", default=None, help="only this pipeline "
                   "(repeatable)")
    p.add_argument("--group", action="append", default=None, help="only devices in this "
                   "group (repeatable)")
    p.add_argument("--plain", action="store_true",
                   help="print lines instead of redrawing (the default when not a terminal)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between updates (default 1)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
