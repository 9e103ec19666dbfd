"""System tests (a real systemd in a container) run only through ``./dev system``, which sets
EDGE_AGENT_SYSTEM=1: they need root, systemd-nspawn and a cached Debian root file system."""

from __future__ import annotations

import os
from pathlib import Path


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if os.environ.get("EDGE_AGENT_SYSTEM") != "1" and collection_path.suffix == ".py" and \
            collection_path.name.startswith("test_"):
        return True
    return None
