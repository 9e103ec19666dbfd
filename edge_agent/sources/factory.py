"""Build the source a pipeline's config asks for."""

from __future__ import annotations

from edge_agent.config import (
    CameraSourceConfig,
    ImagesSourceConfig,
    SensorSourceConfig,
    SyntheticSourceConfig,
    VideoSourceConfig,
)
from edge_agent.sources.base import Source
from edge_agent.sources.registry import SOURCES


def create_source(cfg: CameraSourceConfig | VideoSourceConfig | ImagesSourceConfig
                  | SyntheticSourceConfig | SensorSourceConfig) -> Source:
    """Create (not open) the source for ``cfg``.

    Args:
        cfg: one of the source configs of :data:`edge_agent.config.SourceConfig`; its
            ``type`` selects the implementation through the lazy ``SOURCES`` registry.

    Returns:
        The source; call ``open()`` before ``read()`` and ``close()`` when done.

    Raises:
        PluginUnavailableError: the type is unknown or its optional dependency is missing.
        SourceError: the config names something the source rejects before opening.
    """
    cls = SOURCES.get(cfg.type)
    source: Source = cls(cfg)
    return source
