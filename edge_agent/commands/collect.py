"""``edge-agent collect --broker H[:P] --db URL [--share NAME]``: the collector as a command."""

from __future__ import annotations

import argparse
import logging
import socket
import threading

from edge_agent.config import LoggingConfig
from edge_agent.consumer.collector import Collector, install_stop_signals
from edge_agent.consumer.options import broker_from_args
from edge_agent.consumer.store import SqlStore, StoreUnavailableError, open_store
from edge_agent.errors import EdgeAgentError
from edge_agent.logsetup import setup_logging
from edge_agent.mqtt.inbound import BrokerOptions
from edge_agent.notify import SystemdNotifier

logger = logging.getLogger(__name__)


def cmd_collect(args: argparse.Namespace) -> int:
    """Run the collector until SIGTERM/SIGINT; exit 1 when the database is unreachable at
    start."""
    setup_logging(LoggingConfig(level=args.log_level))
    broker = broker_from_args(args)
    if args.batch_size < 1 or args.queue_size < 1:
        raise EdgeAgentError("--batch-size and --queue-size must be at least 1")
    if args.mqtt_version != "5" and args.share:
        raise EdgeAgentError("--share needs MQTT 5 (--mqtt-version 5)")
    store = open_store(args.db)
    client_id = args.client_id or (
        f"edge-agent-collect-{args.share or 'solo'}-{socket.gethostname()}")[:64]
    collector = Collector(broker, store, prefix=args.topic_prefix, client_id=client_id,
                          share=args.share, devices=args.device, pipelines=args.pipeline,
                          batch_size=args.batch_size, queue_size=args.queue_size)
    stop = threading.Event()
    relay = install_stop_signals(stop)
    try:
        return _collect(args, collector, stop, client_id, broker, store)
    finally:
        relay.stop()  # the previous handlers back (the CLI may run in-process)


def _collect(args: argparse.Namespace, collector: Collector, stop: threading.Event,
             client_id: str, broker: BrokerOptions, store: SqlStore) -> int:
    if args.retire:
        if not args.client_id:
            raise EdgeAgentError("--retire needs the --client-id of the collector to retire")
        try:
            if collector.retire(stop):
                logger.info("retired %s: its session is ended", client_id)
                return 0
        except StoreUnavailableError as exc:
            raise EdgeAgentError(f"cannot open the database: {exc}") from None
        raise EdgeAgentError(f"{client_id}: not retired (stopped or still receiving); its "
                             "session is kept")
    notifier = SystemdNotifier.from_env()
    logger.info("collecting from %s:%d into %s as %s%s", broker.host, broker.port, store.url,
                client_id, f" (share {args.share})" if args.share else "")
    try:
        collector.run(stop, stats_interval=args.stats_interval,
                      on_ready=lambda: notifier.ready("collecting"))
    except StoreUnavailableError as exc:
        raise EdgeAgentError(f"cannot open the database: {exc}") from None
    finally:
        notifier.stopping()
    return 0
