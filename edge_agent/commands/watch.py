"""``edge-agent watch``: the live view of what devices publish, as a command."""

from __future__ import annotations

import argparse
import sys
import time

from edge_agent.consumer.client import Consumer
from edge_agent.consumer.options import broker_from_args
from edge_agent.consumer.watch import WatchView, use_colour


def cmd_watch(args: argparse.Namespace) -> int:
    """Run the live view until Ctrl-C (or ``--seconds``)."""
    broker = broker_from_args(args)
    out = sys.stdout
    live = out.isatty() and not args.plain
    view = WatchView(out, live=live, colour=live and use_colour(out))
    consumer = Consumer(broker, devices=args.device, groups=args.group,
                        pipelines=args.pipeline, prefix=args.topic_prefix)
    try:
        consumer.start()
    except ConnectionError as exc:
        print(f"edge-agent watch: {exc}", file=sys.stderr)
        return 1
    if live:
        out.write("\x1b[2J")
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    next_render = time.monotonic()
    try:
        while deadline is None or time.monotonic() < deadline:
            item = consumer.get(timeout=max(0.0, next_render - time.monotonic()))
            if item is not None:
                view.add(item)
            if time.monotonic() >= next_render:
                view.render(consumer.stats().as_dict())
                next_render = time.monotonic() + max(args.interval, 0.1)
    finally:
        consumer.stop()
    return 0
