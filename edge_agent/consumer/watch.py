"""``edge-agent watch``: a live view of what devices publish, per device and pipeline.

For each device/pipeline: the latest detections, detections per label since start, results per
second, latency from capture (the result's ``ts``) to arrival here, replays and duplicates
seen, gaps found (and restarts). On a terminal the table is redrawn in place, with colour
(unless ``NO_COLOR`` is set or ``TERM=dumb``); piped, it prints one plain line per
device/pipeline per interval, and a line for every gap, restart and event as it happens.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from typing import TextIO

from edge_agent.consumer.client import Item
from edge_agent.consumer.messages import Event, Result, Status
from edge_agent.consumer.sequence import Gap, Restart, Rewind

_WINDOW_S = 5.0  # results per second over this many seconds of arrivals


@dataclass
class Row:
    """What the view knows about one device/pipeline."""

    device: str
    pipeline: str
    results: int = 0
    events: int = 0
    replays: int = 0
    gaps: int = 0
    missing: int = 0
    restarts: int = 0
    latest: str = ""
    per_label: collections.Counter[str] = field(default_factory=collections.Counter)
    arrivals: collections.deque[float] = field(default_factory=collections.deque)
    latency: collections.deque[float] = field(default_factory=lambda: collections.deque(
        maxlen=200))
    last_event: str = ""
    changed: bool = False

    def fps(self, now: float) -> float:
        """Results per second over the last few seconds."""
        while self.arrivals and self.arrivals[0] < now - _WINDOW_S:
            self.arrivals.popleft()
        return len(self.arrivals) / _WINDOW_S

    def latency_text(self) -> str:
        """Median/maximum capture-to-arrival latency of the recent results, ms (or -)."""
        if not self.latency:
            return "-"
        ordered = sorted(self.latency)
        return f"{ordered[len(ordered) // 2] * 1000:.0f}/{ordered[-1] * 1000:.0f}"


class WatchView:
    """Keeps the rows and renders them.

    Args:
        out: where to write.
        live: redraw a table in place (a terminal) instead of printing lines.
        colour: use ANSI colours.
    """

    def __init__(self, out: TextIO, *, live: bool, colour: bool) -> None:
        self.out = out
        self.live = live
        self.colour = colour
        self.rows: dict[tuple[str, str], Row] = {}
        self.online: dict[str, str] = {}
        self.notes: collections.deque[str] = collections.deque(maxlen=8)

    def _c(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def _row(self, device: str, pipeline: str) -> Row:
        key = (device, pipeline)
        if key not in self.rows:
            self.rows[key] = Row(device, pipeline)
        return self.rows[key]

    def _note(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.live:
            self.notes.append(f"{stamp} {text}")
        else:
            print(f"{stamp} {text}", file=self.out, flush=True)

    def add(self, item: Item, now: float | None = None) -> None:
        """Account for one item from the consumer."""
        now = time.monotonic() if now is None else now
        if isinstance(item, Result):
            row = self._row(item.device, item.pipeline)
            row.results += 1
            row.replays += int(item.replayed)
            row.arrivals.append(now)
            row.latency.append(max(0.0, time.time() - item.time))
            row.per_label.update(d.label for d in item.detections)
            row.latest = ", ".join(
                f"{d.label} {d.score:.2f}" if d.score is not None else d.label
                for d in item.detections[:4]) + (" ..." if len(item.detections) > 4 else "")
            row.changed = True
        elif isinstance(item, Event):
            row = self._row(item.device, item.pipeline)
            row.events += 1
            row.replays += int(item.replayed)
            what = " ".join(str(x) for x in (item.event, item.label, item.zone) if x)
            if item.track_id is not None:
                what += f" track {item.track_id}"
            if item.dwell_s is not None:
                what += f" after {item.dwell_s:.1f} s"
            row.last_event = what
            self._note(f"event {item.device}/{item.pipeline}: {what}")
        elif isinstance(item, Gap):
            row = self._row(item.device, item.pipeline)
            row.gaps += 1
            row.missing += item.missing
            self._note(self._c(f"GAP {item.device}/{item.pipeline} {item.kind} seq "
                               f"{item.first}-{item.last} ({item.missing} missing"
                               f"{', at a restart' if item.at_restart else ''})", "1;31"))
        elif isinstance(item, Restart):
            self._row(item.device, item.pipeline).restarts += 1
            self._note(self._c(f"restart {item.device}/{item.pipeline} {item.kind}: boot "
                               f"{item.boot_id[:8]} at seq {item.seq}, lost {item.lost}",
                               "33"))
        elif isinstance(item, Rewind):
            self._note(self._c(f"rewind {item.device}/{item.pipeline} {item.kind}: seq "
                               f"{item.seq} after {item.last_seq} (power loss?)", "33"))
        elif isinstance(item, Status):
            self.online[item.device] = item.state

    def _line(self, row: Row, now: float) -> str:
        labels = " ".join(f"{k}:{v}" for k, v in row.per_label.most_common(4)) or "-"
        return (f"{row.device}/{row.pipeline} results={row.results} fps={row.fps(now):.1f} "
                f"latency_ms={row.latency_text()} labels={labels} "
                f"latest=[{row.latest}] replays={row.replays} gaps={row.gaps} "
                f"missing={row.missing} events={row.events}")

    def render(self, stats: dict[str, int], now: float | None = None) -> None:
        """Redraw the table (live) or print the rows that changed (plain)."""
        now = time.monotonic() if now is None else now
        if not self.live:
            for row in self.rows.values():
                if row.changed:
                    print(self._line(row, now), file=self.out)
                    row.changed = False
            self.out.flush()
            return
        lines = [self._c("edge-agent watch", "1") + f"  {time.strftime('%H:%M:%S')}  "
                 f"received {stats.get('received', 0)}  duplicates "
                 f"{stats.get('duplicates', 0)}  replayed {stats.get('replayed', 0)}  gaps "
                 f"{stats.get('gaps', 0)}", ""]
        head = (f"{'DEVICE/PIPELINE':<28} {'STATE':<8} {'RESULTS':>8} {'FPS':>5} "
                f"{'LAT p50/max ms':>15} {'REPLAYS':>7} {'GAPS':>5}  LABELS (since start)")
        lines.append(self._c(head, "1;4"))
        for row in sorted(self.rows.values(), key=lambda r: (r.device, r.pipeline)):
            state = self.online.get(row.device, "?")
            labels = " ".join(f"{k}:{v}" for k, v in row.per_label.most_common(4)) or "-"
            gaps = f"{row.gaps:>5}"
            lines.append(
                f"{(row.device + '/' + row.pipeline)[:28]:<28} "
                f"{self._c(f'{state:<8}', '32' if state == 'online' else '31')} "
                f"{row.results:>8} {row.fps(now):>5.1f} "
                f"{row.latency_text():>15} {row.replays:>7} "
                f"{self._c(gaps, '1;31') if row.gaps else gaps}  {labels}")
            lines.append(f"{'':<28}   latest: {row.latest or '-'}"
                         + (f"   event: {row.last_event}" if row.last_event else ""))
        if self.notes:
            lines += ["", *self.notes]
        # home, draw, clear the rest: no flicker from clearing the whole screen first
        self.out.write("\x1b[H" + "\x1b[K\n".join(lines) + "\x1b[K\n\x1b[J")
        self.out.flush()


def use_colour(out: TextIO) -> bool:
    """Colour only on a terminal that is not ``dumb``, and never with ``NO_COLOR`` set."""
    return (out.isatty() and os.environ.get("TERM", "") != "dumb"
            and "NO_COLOR" not in os.environ)
