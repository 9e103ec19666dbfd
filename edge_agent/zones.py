"""Zones: named polygons a tracked object is in, with inertia, dwell and loitering.

Each confirmed track's anchor point (bottom centre of its box by default: where an object
stands) is tested against every zone whose labels it matches. Hysteresis both ways: the
object *enters* a zone after ``inertia`` consecutive inference frames with the anchor inside
(``zone_enter``), and *leaves* after ``inertia`` consecutive frames outside or when its track
ends (``zone_leave``). While it is in the zone, the detection carries the zone's name and
counts in it. The dwell of a stay runs from the first frame of the inside run that entered to
the last frame the anchor was inside, so inertia delays the events, not the dwell.
``loitering`` fires once per stay when the stay reaches ``loiter_s``.

Frames where a track is not detected change nothing (motion gating, a missed detection);
only the tracker decides that a track is gone. Tentative tracks (no id yet) are in no zone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from edge_agent.config import ZoneConfig
from edge_agent.polygons import as_array, inside
from edge_agent.types import Box, Detection, TrackEvent

ZoneEventKind = Literal["zone_enter", "zone_leave", "loitering"]


def anchor_point(box: Box, anchor: str) -> tuple[float, float]:
    """The point of ``box`` (normalised xyxy) that is tested against zones."""
    x = (box[0] + box[2]) / 2
    if anchor == "center":
        return x, (box[1] + box[3]) / 2
    if anchor == "top_center":
        return x, box[1]
    return x, box[3]  # bottom_center


@dataclass(slots=True)
class _Stay:
    """One track in (or on its way into or out of) one zone."""

    label: str
    class_id: int
    box: Box
    start_ts: float  # first frame of the inside run that entered (or is entering)
    last_in_ts: float
    inside: bool = False
    run: int = 0  # consecutive frames against the current state
    loitered: bool = False


class ZoneTracker:
    """Zone membership, counts and events of one pipeline's tracked objects.

    Args:
        zones: the pipeline's zones (``pipelines[].zones``).
        pipeline: the pipeline name, carried in the events.
    """

    def __init__(self, zones: Sequence[ZoneConfig], pipeline: str) -> None:
        self.zones = tuple(zones)
        self.pipeline = pipeline
        self.names = tuple(z.name for z in self.zones)
        self._polygons = [as_array(z.polygon) for z in self.zones]
        self._labels = [None if z.labels is None else {s.strip().casefold() for s in z.labels}
                        for z in self.zones]
        self._stays: dict[tuple[int, int], _Stay] = {}  # (track id, zone index)

    def update(self, detections: Sequence[Detection], ts: float,
               left: Iterable[int] = ()) -> tuple[tuple[Detection, ...], list[TrackEvent]]:
        """Apply one inference frame.

        Args:
            detections: the frame's detections after the tracker (``track_id`` set on
                confirmed tracks).
            ts: the frame's time in seconds.
            left: ids of the tracks the tracker declared gone in this frame.

        Returns:
            The detections with ``zones`` set (in the order of the config), and this frame's
            zone events: enters and loitering first, then leaves.
        """
        events: list[TrackEvent] = []
        leaves: list[TrackEvent] = []
        out: list[Detection] = []
        for det in detections:
            if det.track_id is None:
                out.append(det)
                continue
            names: list[str] = []
            key = det.label.strip().casefold()
            for zi, zone in enumerate(self.zones):
                labels = self._labels[zi]
                if labels is not None and key not in labels:
                    continue
                x, y = anchor_point(det.box, zone.anchor)
                now_in = inside(self._polygons[zi], x, y)
                if self._step(det, zi, now_in, ts, events, leaves):
                    names.append(zone.name)
            out.append(dataclasses.replace(det, zones=tuple(names)) if names else det)
        for track_id in left:
            for zi in range(len(self.zones)):
                stay = self._stays.pop((track_id, zi), None)
                if stay is not None and stay.inside:
                    leaves.append(self._event("zone_leave", track_id, zi, stay, ts,
                                              stay.last_in_ts - stay.start_ts))
        return tuple(out), events + leaves

    def _step(self, det: Detection, zi: int, now_in: bool, ts: float,
              events: list[TrackEvent], leaves: list[TrackEvent]) -> bool:
        """Advance one track in one zone; whether the detection is in the zone now."""
        assert det.track_id is not None
        key = (det.track_id, zi)
        stay = self._stays.get(key)
        inertia = self.zones[zi].inertia
        if stay is None:
            if not now_in:
                return False
            stay = self._stays[key] = _Stay(det.label, det.class_id, det.box, ts, ts)
        stay.box, stay.class_id = det.box, det.class_id
        if not stay.inside:
            if not now_in:  # the inside run broke before it counted
                del self._stays[key]
                return False
            stay.run += 1
            stay.last_in_ts = ts
            if stay.run < inertia:
                return False
            stay.inside, stay.run = True, 0
            events.append(self._event("zone_enter", det.track_id, zi, stay, ts,
                                      ts - stay.start_ts))
        elif now_in:
            stay.run = 0
            stay.last_in_ts = ts
        else:
            stay.run += 1
            if stay.run >= inertia:
                del self._stays[key]
                leaves.append(self._event("zone_leave", det.track_id, zi, stay, ts,
                                          stay.last_in_ts - stay.start_ts))
                return False
        loiter = self.zones[zi].loiter_s
        if (loiter is not None and not stay.loitered and now_in
                and ts - stay.start_ts >= loiter):
            stay.loitered = True
            events.append(self._event("loitering", det.track_id, zi, stay, ts,
                                      ts - stay.start_ts))
        return True

    def reset(self, ts: float) -> list[TrackEvent]:
        """Forget every stay (the tracker was reset); objects in a zone leave it now."""
        events = [self._event("zone_leave", tid, zi, s, ts, s.last_in_ts - s.start_ts)
                  for (tid, zi), s in self._stays.items() if s.inside]
        self._stays.clear()
        return events

    def _event(self, kind: ZoneEventKind, track_id: int, zi: int, stay: _Stay, ts: float,
               dwell: float) -> TrackEvent:
        return TrackEvent(pipeline=self.pipeline, ts=ts, event=kind, track_id=track_id,
                          label=stay.label, class_id=stay.class_id, dwell_s=max(0.0, dwell),
                          box=stay.box, zone=self.zones[zi].name)

