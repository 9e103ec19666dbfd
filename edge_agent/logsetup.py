"""Logging set-up: journald-friendly under systemd, timestamped text in a terminal, or JSON lines.

Under systemd, stderr goes to the journal, which adds its own timestamp and reads a ``<N>``
syslog priority prefix at the start of each line (the ``sd-daemon(3)`` convention), so the
journald format has no timestamp and tags every line, continuation lines of a traceback
included. systemd sets ``$JOURNAL_STREAM`` to the ``device:inode`` of that stream; ``auto``
picks journald only when stderr really is it (not when a child of the service redirected it).

The ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` line is printed by TFLite's C++
code straight to the stderr file descriptor; Python logging never sees it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from edge_agent.config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}
# Python level -> syslog priority (sd-daemon.h SD_DEBUG .. SD_CRIT)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6))
_MARK = "_edge_agent_handler"
# libraries that are chatty at INFO/DEBUG
_QUIET = {"PIL": logging.INFO, "urllib3": logging.WARNING, "asyncio": logging.WARNING}


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emerg .. 7 debug) for a Python log level."""
    for level, priority in _PRIORITY:
        if levelno >= level:
            return priority
    return 7


class JournaldFormatter(logging.Formatter):
    """``<N>logger: message`` with every line prefixed, no timestamp (journald adds one)."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """Format and prefix each line with the record's syslog priority."""
        text = super().format(record)
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, thread, exc."""

    def format(self, record: logging.LogRecord) -> str:
        """Serialise the record (the message with its %-args applied)."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, ensure_ascii=False, default=str)


def text_formatter() -> logging.Formatter:
    """The terminal format: ``2026-11-28 12:00:00,123 INFO    edge_agent.agent: ...``."""
    return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def under_journald(stream: IO[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is connected to the journal (``$JOURNAL_STREAM``)."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    stream = sys.stderr if stream is None else stream
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        # no real file descriptor (pytest capture): trust the variable
        return True


def resolve_format(cfg: LoggingConfig, stream: IO[str] | None = None,
                   env: Mapping[str, str] | None = None) -> str:
    """The concrete format ``auto`` stands for here: "journald" or "text" (others as given)."""
    if cfg.format != "auto":
        return cfg.format
    return "journald" if under_journald(stream, env) else "text"


def setup_logging(cfg: LoggingConfig, *, stream: IO[str] | None = None,
                  env: Mapping[str, str] | None = None) -> logging.Handler:
    """Configure the root logger from ``cfg``; call again to reconfigure (after a reload).

    Replaces the handler a previous call installed and leaves other handlers alone (pytest's,
    for instance).

    Args:
        cfg: level and format ("auto", "text", "journald", "json").
        stream: where to write (default stderr).
        env: the environment to read ``JOURNAL_STREAM`` from (default ``os.environ``).

    Returns:
        The installed handler.
    """
    stream = sys.stderr if stream is None else stream
    fmt = resolve_format(cfg, stream, env)
    formatter: logging.Formatter
    if fmt == "journald":
        formatter = JournaldFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = text_formatter()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(_LEVELS[cfg.level])
    for name, level in _QUIET.items():
        logging.getLogger(name).setLevel(max(level, _LEVELS[cfg.level]))
    logging.captureWarnings(True)
    return handler
