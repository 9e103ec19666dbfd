"""``edge-agent privacy-report``: what the audit log says left the device."""

from __future__ import annotations

import argparse
import json
import sys

from edge_agent.config import load_config
from edge_agent.privacy.audit import AUDIT_FILE, format_report, read_entries, summarise


def cmd_privacy_report(args: argparse.Namespace) -> int:
    """``edge-agent privacy-report [-c FILE] [--json]``: summarise the audit log."""
    config, _ = load_config(getattr(args, "config", None))
    directory = config.state_dir / "audit"
    try:
        summary = summarise(read_entries(directory))
    except OSError as exc:
        print(f"cannot read the audit log in {directory}: {exc} (run as the edge-agent user "
              "or with sudo)", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        if not (directory / AUDIT_FILE).exists():
            print(f"no audit log in {directory} (nothing published yet, or audit disabled)",
                  file=sys.stderr)
        print(format_report(summary))
    return 0
