"""The source protocol."""

from __future__ import annotations

from typing import Protocol

from edge_agent.types import Frame


class Source(Protocol):
    """Produces frames. ``read`` is called from one thread only.

    Live sources (cameras, streams) hand over the newest frame and count the ones they drop;
    file sources hand over every frame in order, paced at ``fps`` unless it is 0.
    """

    dropped: int  # frames the source discarded because the pipeline was busy

    @property
    def live(self) -> bool:
        """A device or stream (newest frame wins, drops counted), not a file or generator."""
        ...

    @property
    def bad_lines(self) -> int:
        """Malformed sensor lines or records skipped so far (0 for image sources)."""
        ...

    def open(self) -> None:
        """Open the device or file; raise SourceError when it cannot be opened."""
        ...

    def read(self, timeout: float) -> Frame | None:
        """The next frame, or None when none arrived within ``timeout`` seconds.

        Raises:
            SourceError: the source failed (the pipeline reopens it with backoff).
            EOFError: a finite source has ended (the pipeline is then ``finished``).
        """
        ...

    def close(self) -> None:
        """Release the device or file; safe to call twice."""
        ...
