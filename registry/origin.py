"""What every registered item (task, task family, command, dataset layout, metric) records about its plugin."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T", bound="PluginItem")


class PluginItem(BaseModel):
    """Base of the registry's items: the plugin (entry-point name), distribution and version that registered it,
    filled in by the registry (``None`` for an item built by hand)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

    def with_origin(self: T, plugin: str, distribution: str | None, version: str | None) -> T:
        """A copy that names the plugin, distribution and version it came from."""
        return self.model_copy(update={"plugin": plugin, "distribution": distribution, "version": version})
