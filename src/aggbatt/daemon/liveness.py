"""Liveness probes for packs that have gone quiet.

A pack whose values have not changed for `freshness.stale_after_idle` seconds gets one GetValue
(then one per further `stale_after_idle` while it stays quiet), answered within
min(PROBE_TIMEOUT, `stale_after`) seconds by any live driver. A driver that does not answer is
hung: its readings go to the engine marked `unresponsive` until one of its values changes.
Nothing else is polled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aggbatt.bus.monitor import Monitor
from aggbatt.core.engine import ServiceReading, TickResult

PROBE_TIMEOUT = 2.0  # s: a live driver answers a GetValue at once, even when it is busy


class Liveness:
    def __init__(self, monitor: Monitor, freshness: Callable[[], Any],
                 on_hung: Callable[[], None]) -> None:
        """`freshness`: the config's [freshness] table now (a reload may change it);
        `on_hung`: called when a probe finds a hung driver (the daemon ticks soon)."""
        self.monitor = monitor
        self.freshness = freshness
        self.on_hung = on_hung
        # When each quiet service was last probed, the probes under way, and the change stamp
        # of each service that did not answer.
        self._probed: dict[str, float] = {}
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._unresponsive: dict[str, float] = {}

    def readings(self) -> list[ServiceReading]:
        """What the monitor holds, each service marked when it did not answer its probe."""
        for name, stamp in list(self._unresponsive.items()):
            remote = self.monitor.services.get(name)
            if remote is None or remote.last_change != stamp:
                del self._unresponsive[name]
        return [
            ServiceReading(service=s.name, values=s.values, last_change=s.last_change,
                           appeared_at=s.appeared_at, changed_at=s.changed_at,
                           unresponsive=s.name in self._unresponsive)
            for s in self.monitor.services.values()
        ]

    def probe_quiet(self, now: float, result: TickResult) -> None:
        """Start a probe for each pack that has been quiet for stale_after_idle."""
        quiet_for = self.freshness().stale_after_idle
        for pack in result.packs:
            name = pack.service
            if name is None or pack.age is None or pack.age < quiet_for or name in self._probing:
                continue
            last = self._probed.get(name)
            remote = self.monitor.services.get(name)
            if remote is None or (last is not None and now - last < quiet_for):
                continue
            self._probed[name] = now
            self._probing[name] = asyncio.create_task(self._probe(name, remote.last_change))

    async def _probe(self, name: str, stamp: float) -> None:
        try:
            timeout = min(PROBE_TIMEOUT, self.freshness().stale_after)
            if not await self.monitor.answers(name, timeout):
                remote = self.monitor.services.get(name)
                if remote is not None and remote.last_change == stamp:
                    self._unresponsive[name] = stamp
                    self.on_hung()
        finally:
            self._probing.pop(name, None)

    def cancel(self) -> None:
        for task in list(self._probing.values()):
            task.cancel()
