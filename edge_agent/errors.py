"""The exceptions of edge-agent.

Every error a user can cause derives from :class:`EdgeAgentError`; ``cli.py`` maps them to exit
codes and one-line messages. Messages say what is wrong and what to do next.
"""

from __future__ import annotations


class EdgeAgentError(Exception):
    """Base of every error edge-agent raises on purpose."""


class ConfigError(EdgeAgentError):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PluginUnavailableError(EdgeAgentError):
    """A plugin's optional dependency is missing; the message names the extra to install."""


class SourceError(EdgeAgentError):
    """A frame source failed (transient: the pipeline retries with backoff)."""


class ModelError(EdgeAgentError):
    """A model cannot be loaded, does not fit its decoder, or produced unusable output."""


class UpdateError(EdgeAgentError):
    """A model update was refused; the message is the reason published in the state message."""


class PublishError(EdgeAgentError):
    """A message could not be published or was refused by the egress guard."""
