"""``python -m edge_agent``: the same entry point as the ``edge-agent`` console script."""

from edge_agent.cli import main

raise SystemExit(main())
