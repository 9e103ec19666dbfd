"""``edge-agent snapshot``: one annotated, redacted frame of a pipeline written to a file."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.logsetup import setup_logging
from edge_agent.view.oneshot import take_snapshot

logger = logging.getLogger(__name__)


def cmd_snapshot(args: argparse.Namespace) -> int:
    """``edge-agent snapshot -c FILE --pipeline NAME --out FILE.jpg``."""
    config, _ = load_config(args.config)
    setup_logging(config.logging)
    out = Path(args.out)
    try:
        jpeg, info = take_snapshot(config, args.pipeline, args.timeout)
    except ConfigError:
        raise
    except EdgeAgentError as exc:
        logger.error("%s", exc)
        return 1
    folder = out.parent if str(out.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(jpeg)
        os.replace(tmp, out)
    except OSError as exc:
        logger.error("--out: cannot write %s: %s", out, exc.strerror or exc)
        return 1
    print(f"{out}: frame {info.get('frame')}, {len(info.get('detections', []))} detections, "
          f"{info.get('faces_redacted', 0)} faces redacted")
    return 0
