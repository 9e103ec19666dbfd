"""Reusable checks for what a subscriber to ``#`` sees (for the end-to-end privacy test).

``assert_no_image_data(payload)`` fails on anything that looks like an image or bulk data:
JPEG/PNG/BMP magic numbers (raw or base64-encoded), base64 (or base64url) runs over 1 KB,
``data:image/`` URIs, and JSON arrays of more than 1000 numbers; a non-empty payload that is not
JSON is refused too. ``validate_payload(topic, payload)`` validates a device payload against
the JSON Schema its topic implies and returns the kind.
"""

from __future__ import annotations

import json
import re
from typing import Any

from edge_agent.privacy.schemas import validate

MAX_NUMERIC_ARRAY = 1000
MAX_BASE64_RUN = 1024

_MAGIC = {
    "JPEG": re.compile(rb"\xff\xd8\xff"),
    "PNG": re.compile(rb"\x89PNG\r\n\x1a\n"),
    "BMP": re.compile(rb"BM[\x00-\xff]{4}\x00\x00\x00\x00", re.DOTALL),
    "base64 JPEG": re.compile(rb"/9j/[24][A-Za-z0-9+/]{10}"),  # FFD8FF + E0/E1/DB...
    "base64 PNG": re.compile(rb"iVBORw0KGgo"),
    "base64 BMP": re.compile(rb"Qk[0-9A-Za-z+/]{6}AAAAA"),
    "data URI": re.compile(rb"data:image/", re.IGNORECASE),
}
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{%d,}={0,2}" % (MAX_BASE64_RUN + 1))

# (suffix pattern, kind); the prefix and device levels are whatever precedes them
_TOPICS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/results/[a-z0-9_-]+$"), "result"),
    (re.compile(r"/events/[a-z0-9_-]+$"), "event"),
    (re.compile(r"/model/[a-z0-9_-]+/state$"), "model_state"),
    (re.compile(r"/model/[a-z0-9_-]+/shadow$"), "shadow"),
    (re.compile(r"/inventory$"), "inventory"),
    (re.compile(r"/snapshots/[a-z0-9_-]+/meta$"), "snapshot"),
    (re.compile(r"/snapshots/[a-z0-9_-]+$"), "snapshot_jpeg"),
    (re.compile(r"/status$"), "status"),
    (re.compile(r"/stats$"), "stats"),
    (re.compile(r"/cmd/reply$"), "cmd_reply"),
    (re.compile(r"/cmd/.+$"), "command"),
]


def _walk_arrays(value: Any, path: str = "$") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk_arrays(v, f"{path}.{k}")
    elif isinstance(value, list):
        numbers = sum(1 for v in value if isinstance(v, (int, float)) and not isinstance(v, bool))
        if numbers > MAX_NUMERIC_ARRAY:
            raise AssertionError(f"numeric array of {numbers} elements at {path}")
        for i, v in enumerate(value):
            _walk_arrays(v, f"{path}[{i}]")


def assert_no_image_data(payload: bytes) -> None:
    """Fail (AssertionError) if ``payload`` carries image data or bulk numeric data."""
    for name, pattern in _MAGIC.items():
        if pattern.search(payload):
            raise AssertionError(f"payload carries {name} data")
    run = _BASE64_RUN.search(payload)
    if run:
        raise AssertionError(f"payload carries a base64-like run of {len(run.group())} bytes")
    if not payload:
        return
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise AssertionError("payload is not JSON (binary or unknown data)") from None
    _walk_arrays(data)


def topic_kind(topic: str, discovery_prefix: str = "homeassistant") -> str | None:
    """The message kind a topic carries (``command`` for commands sent *to* the device)."""
    if topic.startswith(discovery_prefix.rstrip("/") + "/") and topic.endswith("/config"):
        return "discovery"
    for pattern, kind in _TOPICS:
        if pattern.search(topic):
            return kind
    return None


def validate_payload(topic: str, payload: bytes, discovery_prefix: str = "homeassistant") -> str:
    """Validate a payload seen on ``topic`` against its schema; return the kind.

    Snapshot JPEGs are checked for JPEG framing only; commands (published to the device by
    others) and empty retained discovery removals are not validated.

    Raises:
        AssertionError: unknown topic, not JSON, or the payload breaks its schema.
    """
    kind = topic_kind(topic, discovery_prefix)
    if kind is None:
        raise AssertionError(f"unexpected topic {topic!r}")
    if kind == "snapshot_jpeg":
        assert payload.startswith(b"\xff\xd8\xff") and payload.endswith(b"\xff\xd9"), \
            f"{topic}: not a JPEG"
        return kind
    if kind == "command" or (kind == "discovery" and payload == b""):
        return kind
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise AssertionError(f"{topic}: payload is not JSON") from None
    try:
        validate(kind, data)
    except Exception as exc:
        raise AssertionError(f"{topic}: {exc}") from None
    return kind
