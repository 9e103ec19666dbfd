"""The MQTT topic tree of the contract (``P`` = topic_prefix, ``D`` = device_id).

Every topic the agent publishes or subscribes to is built here, so the tree is written down
once::

    P/D/status                      retained, online/offline (offline is the last will)
    P/D/results/<pipeline>          results (durable, through the outbox)
    P/D/events/<pipeline>           tracker enter/leave events (durable)
    P/D/model/<pipeline>/state      retained model state
    P/D/snapshots/<pipeline>        redacted JPEG bytes (+ ``/meta``)
    P/D/stats                       periodic stats
    P/D/cmd/#                       commands to this device
    P/group/<g>/cmd/#               commands to a group the device is in
    P/D/cmd/reply                   replies to commands
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")

REPLY_COMMAND = "reply"
"""``P/D/cmd/reply`` lies under ``P/D/cmd/#``: the device's own replies, never a command."""


def validate_name(name: str, what: str = "pipeline") -> str:
    """Return ``name`` when it is a valid pipeline or group name (``[a-z0-9_-]{1,64}``).

    Raises:
        ValueError: the name would break the topic tree (wildcards, slashes, empty, upper case).
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"invalid {what} name {name!r} (expected [a-z0-9_-], 1 to 64 characters)")
    return name


@dataclass(frozen=True, slots=True)
class CommandTopic:
    """Where a command arrived: its name (``model/update``, ``rollback``...) and group."""

    name: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic builders for one device.

    Attributes:
        prefix: the configured ``mqtt.topic_prefix``.
        device_id: the device id.
    """

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "#+"):
            raise ValueError(f"invalid topic prefix {self.prefix!r}")
        validate_name(self.device_id, "device")

    @property
    def base(self) -> str:
        """``P/D``."""
        return f"{self.prefix}/{self.device_id}"

    def status(self) -> str:
        """``P/D/status`` (retained; the last will)."""
        return f"{self.base}/status"

    def results(self, pipeline: str) -> str:
        """``P/D/results/<pipeline>``."""
        return f"{self.base}/results/{validate_name(pipeline)}"

    def events(self, pipeline: str) -> str:
        """``P/D/events/<pipeline>``."""
        return f"{self.base}/events/{validate_name(pipeline)}"

    def model_state(self, pipeline: str) -> str:
        """``P/D/model/<pipeline>/state`` (retained)."""
        return f"{self.base}/model/{validate_name(pipeline)}/state"

    def snapshots(self, pipeline: str) -> str:
        """``P/D/snapshots/<pipeline>`` (the JPEG bytes)."""
        return f"{self.base}/snapshots/{validate_name(pipeline)}"

    def snapshots_meta(self, pipeline: str) -> str:
        """``P/D/snapshots/<pipeline>/meta`` (ts and seq of the snapshot's result)."""
        return f"{self.snapshots(pipeline)}/meta"

    def stats(self) -> str:
        """``P/D/stats``."""
        return f"{self.base}/stats"

    def cmd(self, name: str) -> str:
        """``P/D/cmd/<name>`` (for operators and tests)."""
        return f"{self.base}/cmd/{name}"

    def cmd_filter(self) -> str:
        """``P/D/cmd/#``: commands to this device."""
        return f"{self.base}/cmd/#"

    def group_cmd(self, group: str, name: str) -> str:
        """``P/group/<g>/cmd/<name>``."""
        return f"{self.prefix}/group/{validate_name(group, 'group')}/cmd/{name}"

    def group_cmd_filter(self, group: str) -> str:
        """``P/group/<g>/cmd/#``: commands to a group."""
        return f"{self.prefix}/group/{validate_name(group, 'group')}/cmd/#"

    def cmd_reply(self) -> str:
        """``P/D/cmd/reply``."""
        return f"{self.base}/cmd/{REPLY_COMMAND}"

    def parse_command(self, topic: str) -> CommandTopic | None:
        """The command a topic carries, or None for a topic that is not a command.

        ``P/D/cmd/reply`` (our own replies, which ``P/D/cmd/#`` also matches) is not a command.
        """
        device = f"{self.base}/cmd/"
        if topic.startswith(device):
            name = topic[len(device):]
            if not name or name == REPLY_COMMAND:
                return None
            return CommandTopic(name)
        group_root = f"{self.prefix}/group/"
        if topic.startswith(group_root):
            group, sep, rest = topic[len(group_root):].partition("/cmd/")
            if sep and rest and _NAME.match(group):
                return CommandTopic(rest, group)
        return None
