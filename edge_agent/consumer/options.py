"""The ``--broker`` family of command-line options (DESIGN.md: every ``--broker`` command takes
``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--username`` and ``--password-file``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from edge_agent.consumer_cli import DEFAULT_PREFIX
from edge_agent.errors import ConfigError
from edge_agent.mqtt.inbound import BrokerOptions, parse_broker

CREDENTIAL_NAME = "mqtt-password"
"""With ``--username`` and no ``--password-file``: ``$CREDENTIALS_DIRECTORY/mqtt-password``
(systemd ``LoadCredential=mqtt-password:...``), as the agent does."""

__all__ = ["DEFAULT_PREFIX", "broker_from_args"]


def _file(value: str | None, option: str) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{option} {value}: no such file")
    return path


def broker_from_args(args: argparse.Namespace) -> BrokerOptions:
    """The :class:`BrokerOptions` the options describe.

    Raises:
        ConfigError: a bad ``--broker``, a missing certificate or an unreadable password file
            (one line saying which).
    """
    tls_ca = _file(args.tls_ca, "--tls-ca")
    tls_cert = _file(args.tls_cert, "--tls-cert")
    tls_key = _file(args.tls_key, "--tls-key")
    if (tls_cert or tls_key) and tls_ca is None:
        raise ConfigError("--tls-cert/--tls-key need --tls-ca")
    password = None
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if args.password_file is None and args.username and creds and (
            Path(creds) / CREDENTIAL_NAME).is_file():
        args.password_file = str(Path(creds) / CREDENTIAL_NAME)  # systemd LoadCredential=
    if args.password_file is not None:
        if args.username is None:
            raise ConfigError("--password-file needs --username")
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            raise ConfigError(f"--password-file {args.password_file}: cannot read a password "
                              f"({exc or 'empty file'})") from None
    host, port = parse_broker(args.broker, tls=tls_ca is not None)
    return BrokerOptions(host, port, tls_ca, tls_cert, tls_key, args.username, password,
                         args.mqtt_version)
