"""The daemon's side of the strategies' optional hooks (aggbatt.core.strategies): what they
subscribe to and which localsettings values they read. State files: aggbatt.daemon.store."""

from __future__ import annotations

import logging
from typing import Any

from aggbatt.bus.settings import SettingsClient, SettingsUnavailable
from aggbatt.config import Config
from aggbatt.core.engine import pack_paths
from aggbatt.core.strategies import Strategies

log = logging.getLogger("aggbatt")


def monitored(config: Config, strategies: Strategies) -> dict[str, Any]:
    """Service classes and paths to follow: the packs, plus what the strategies ask for."""
    classes: dict[str, Any] = {
        "battery": pack_paths(config.discovery.cell_voltages, config.discovery.history)}
    for strategy in strategies.all():
        subscriptions = getattr(strategy, "subscriptions", None)
        for name, paths in (subscriptions() if callable(subscriptions) else {}).items():
            classes[name] = classes.get(name, frozenset()) | paths
    return classes


class SettingsFollower:
    """The localsettings values the strategies read, kept current for TickContext.settings.
    They are followed from the start on: a strategy rebuilt at a reload reads what its
    predecessor asked for."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def start(self, settings: SettingsClient, strategies: Strategies) -> None:
        for strategy in strategies.all():
            for path, missing in getattr(strategy, "settings", {}).items():
                try:
                    await settings.watch([path], self._changed)
                    self.values[path] = await settings.get(path)
                except SettingsUnavailable as exc:
                    log.info("%s (%s)", missing, exc)

    def _changed(self, path: str, value: Any) -> None:
        self.values[path] = value
