"""Deduplication by id and seq-gap detection per device, topic and pipeline, in bounded memory.

The device numbers each topic (``results/<pipeline>``, ``events/<pipeline>``) with a ``seq``
that rises by one per message and *continues across restarts* (it is persisted with the
outbox). So for one stream:

* the next seq after the last one, with a new ``boot_id``: the agent **restarted**, nothing
  was lost (:class:`Restart` with ``lost == 0``);
* a jump forward: a **gap** (:class:`Gap`), messages lost (``at_restart`` when the boot changed
  at the same moment, e.g. messages the outbox dropped before a restart);
* a seq at or below the last one that is not a duplicate id: either a late copy that fills an
  open gap (:class:`GapFilled`; after an outage the agent re-sends the oldest unacknowledged
  messages first) or, with a new boot, the counter went back after a power loss
  (:class:`Rewind`: those seq values are used again by new messages with new ids).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

StreamKey = tuple[str, str, str]
"""``(device, kind, pipeline)``: one seq counter on the device."""


class IdWindow:
    """The last ``capacity`` ids seen: ``seen(id)`` is True for a repeat.

    A copy that arrives after more than ``capacity`` newer messages is not recognised; the
    device resends oldest first, so a window of a few outage-lengths of traffic is enough
    (100 000 ids ~ 10 MB).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def seen(self, message_id: str) -> bool:
        """Record ``message_id``; True when it was already in the window."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return True
        self._ids[message_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs ``first..last`` of a stream never arrived (so far)."""

    device: str
    kind: str
    pipeline: str
    first: int
    last: int
    at_restart: bool = False

    @property
    def missing(self) -> int:
        """How many messages the gap holds."""
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class GapFilled:
    """A late message filled ``seq`` of an earlier gap (it was delayed, not lost)."""

    device: str
    kind: str
    pipeline: str
    seq: int


@dataclass(frozen=True, slots=True)
class Restart:
    """The stream continued under a new ``boot_id``; ``lost`` seqs were skipped at the switch."""

    device: str
    kind: str
    pipeline: str
    boot_id: str
    previous_boot_id: str | None
    seq: int
    lost: int


@dataclass(frozen=True, slots=True)
class Rewind:
    """A new boot started at or below the last seq seen (power loss under ``normal``)."""

    device: str
    kind: str
    pipeline: str
    boot_id: str | None
    seq: int
    last_seq: int


Report = Gap | GapFilled | Restart | Rewind


class _Stream:
    __slots__ = ("boots", "gaps", "last", "last_boot")

    def __init__(self, seq: int, boot: str | None) -> None:
        self.last = seq
        self.last_boot = boot
        self.boots: collections.deque[str | None] = collections.deque([boot], maxlen=16)
        self.gaps: list[list[int]] = []  # open [first, last] ranges, oldest first


class SeqTracker:
    """Follows every stream's seq and boot; :meth:`observe` says what a new message means.

    Call it only for messages that are not duplicates by id (see :class:`IdWindow`).

    Args:
        max_open_gaps: open gaps remembered per stream (for :class:`GapFilled`); older ones
            are forgotten (still reported once when found).
    """

    def __init__(self, max_open_gaps: int = 256) -> None:
        self.max_open_gaps = max_open_gaps
        self._streams: dict[StreamKey, _Stream] = {}

    def last_seq(self, device: str, kind: str, pipeline: str) -> int | None:
        """The highest seq seen on a stream, or None."""
        st = self._streams.get((device, kind, pipeline))
        return st.last if st else None

    def open_gaps(self) -> list[Gap]:
        """Every gap not (yet) filled, per stream, oldest first."""
        return [Gap(d, k, p, a, b) for (d, k, p), st in self._streams.items()
                for a, b in st.gaps]

    def observe(self, device: str, kind: str, pipeline: str, seq: int,
                boot_id: str | None) -> list[Report]:
        """Account for one (non-duplicate) message and report what it reveals."""
        key = (device, kind, pipeline)
        st = self._streams.get(key)
        if st is None:
            self._streams[key] = _Stream(seq, boot_id)
            return []
        new_boot = boot_id not in st.boots
        out: list[Report] = []
        if seq > st.last:
            lost = seq - st.last - 1
            if new_boot and boot_id is not None:
                out.append(Restart(device, kind, pipeline, boot_id, st.last_boot, seq, lost))
            if lost:
                out.append(Gap(device, kind, pipeline, st.last + 1, seq - 1,
                               at_restart=new_boot))
                st.gaps.append([st.last + 1, seq - 1])
                del st.gaps[:-self.max_open_gaps]
            st.last = seq
            st.last_boot = boot_id
        elif self._fill(st, seq):
            out.append(GapFilled(device, kind, pipeline, seq))
        elif new_boot:
            out.append(Rewind(device, kind, pipeline, boot_id, seq, st.last))
            st.last = seq  # the counter went back: continue from here
            st.last_boot = boot_id
        # else: an old seq of a known boot (a copy older than the id window): nothing new
        if new_boot:
            st.boots.append(boot_id)
        return out

    @staticmethod
    def _fill(st: _Stream, seq: int) -> bool:
        for i, (a, b) in enumerate(st.gaps):
            if a <= seq <= b:
                pieces = [[a, seq - 1]] if seq > a else []
                if seq < b:
                    pieces.append([seq + 1, b])
                st.gaps[i:i + 1] = pieces
                return True
        return False
