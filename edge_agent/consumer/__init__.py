"""The receiving end: a consumer library, the ``watch`` view and the ``collect`` collector.

Public API (see docs/consumers.md)::

    from edge_agent.consumer import Consumer, Result, Event, Status, Gap, Restart

The message views here are light, typed, read-only views over the JSON payloads of the
contract (edge_agent/schemas); the collector and ``watch`` build on the same parsing.
"""

from __future__ import annotations

from edge_agent.consumer.client import Consumer, ConsumerStats, Item
from edge_agent.consumer.messages import (
    Detection,
    Event,
    MessageFormatError,
    Result,
    Status,
    parse_event,
    parse_result,
    parse_status,
)
from edge_agent.consumer.sequence import Gap, GapFilled, IdWindow, Restart, Rewind, SeqTracker
from edge_agent.mqtt.inbound import BrokerOptions

__all__ = [
    "BrokerOptions", "Consumer", "ConsumerStats", "Detection", "Event", "Gap", "GapFilled",
    "IdWindow", "Item", "MessageFormatError", "Restart", "Result", "Rewind", "SeqTracker",
    "Status", "parse_event", "parse_result", "parse_status",
]
