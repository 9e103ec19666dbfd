"""A lazy plugin registry: ``kind`` string -> ``"module:attr"``, imported only when asked for.

Each stage (sources, runtimes, decoders) owns one :class:`Registry`. Third-party plugins come in
through the entry-point group ``edge_agent.<stage>``. Nothing is imported at start-up, and import
errors are never hidden: a missing optional dependency becomes a
:class:`~edge_agent.errors.PluginUnavailableError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from edge_agent.errors import PluginUnavailableError


class Registry:
    """Maps plugin kinds of one stage to the objects that implement them."""

    def __init__(self, stage: str, builtin: dict[str, str], extras: dict[str, str] | None = None):
        """Create a registry.

        Args:
            stage: the stage name; third-party plugins use the group ``edge_agent.<stage>``.
            builtin: kind -> ``"module:attr"`` of the built-in plugins.
            extras: kind -> the pip extra that provides its optional dependency.
        """
        self.stage = stage
        self._targets = dict(builtin)
        self._extras = dict(extras or {})
        self._loaded: dict[str, Any] = {}

    def kinds(self) -> list[str]:
        """All kinds: built-in ones and those declared by installed packages."""
        kinds = set(self._targets)
        kinds.update(ep.name for ep in metadata.entry_points(group=f"edge_agent.{self.stage}"))
        return sorted(kinds)

    def get(self, kind: str) -> Any:
        """Import and return the object registered for ``kind``."""
        if kind in self._loaded:
            return self._loaded[kind]
        target = self._targets.get(kind)
        if target is None:
            for ep in metadata.entry_points(group=f"edge_agent.{self.stage}"):
                if ep.name == kind:
                    target = ep.value
                    break
        if target is None:
            raise PluginUnavailableError(
                f"unknown {self.stage} kind {kind!r} (expected one of: {', '.join(self.kinds())})"
            )
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            extra = self._extras.get(kind)
            hint = f"; install it with: pip install 'edge-agent[{extra}]'" if extra else ""
            raise PluginUnavailableError(
                f"{self.stage} {kind!r} needs the Python module {exc.name!r}{hint}"
            ) from exc
        obj = getattr(module, attr)
        self._loaded[kind] = obj
        return obj
