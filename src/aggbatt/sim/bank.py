"""A bank of simulated packs in parallel, sharing one bank current.

Rules:

- The bank current (+ = charging) comes from `bank_current`, or from `profile(t)` when a profile is
  set (t = simulated seconds since the bank was made).
- It is split among the packs that let it through, in proportion to their capacity. A pack whose
  BMS does not allow charging takes no charge current (likewise for discharging); the others take
  its share. When no pack lets it through, no pack takes any current.
- Packs whose driver froze, vanished or lost its link are still wired to the bus bar: they keep
  taking their share, only their reports stop or go invalid.
- `run()` steps and publishes every `interval` seconds, as serialbattery polls at 1 Hz.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from aggbatt.sim.pack import SimPack
from aggbatt.sim.pack_model import PackParams, pack_params

Profile = Callable[[float], float]

_DEFAULT_SERIAL = PackParams().serial


class SimBank:
    def __init__(self, packs: list[PackParams] | None = None, *, count: int = 3, cells: int = 16,
                 capacity_ah: float = 280.0, name_prefix: str = "sim", first_instance: int = 1,
                 bank_current: float = 0.0, profile: Profile | None = None) -> None:
        """Packs are named com.victronenergy.battery.<name_prefix><n>, n = 1, 2, ...

        A pack without a device_instance gets first_instance + its index; packs left at the default
        serial get SIM0001, SIM0002, ... so that every pack is distinguishable.
        """
        params = packs if packs is not None else pack_params(count, cells=cells, capacity_ah=capacity_ah)
        if not params:
            raise ValueError("a bank needs at least one pack")
        self.packs: list[SimPack] = []
        for i, p in enumerate(params):
            p = replace(
                p,
                device_instance=first_instance + i if p.device_instance is None else p.device_instance,
                serial=f"SIM{i + 1:04d}" if p.serial == _DEFAULT_SERIAL else p.serial,
            )
            self.packs.append(SimPack(p, name_suffix=f"{name_prefix}{i + 1}"))
        self.bank_current = float(bank_current)
        self.profile = profile
        self.time = 0.0
        self._stop = asyncio.Event()

    def pack(self, number: int) -> SimPack:
        """Pack `number`, counted from 1 like the service names."""
        if not 1 <= number <= len(self.packs):
            raise IndexError(f"pack {number} outside 1..{len(self.packs)}")
        return self.packs[number - 1]

    # ----- physics ----------------------------------------------------------------------------

    def split(self, current: float) -> list[float]:
        """Each pack's share of `current`, by capacity among the packs that let it through."""
        takers = [pack.accepts(current) for pack in self.packs]
        total = sum(pack.params.capacity_ah for pack, takes in zip(self.packs, takers, strict=True) if takes)
        if total <= 0:
            return [0.0] * len(self.packs)
        return [current * pack.params.capacity_ah / total if takes else 0.0
                for pack, takes in zip(self.packs, takers, strict=True)]

    def step(self, dt: float) -> None:
        current = self.profile(self.time) if self.profile is not None else self.bank_current
        for pack, share in zip(self.packs, self.split(current), strict=True):
            pack.step(dt, share)
        self.time += dt

    def true_soc(self) -> float:
        """The bank's real SoC in percent: capacity-weighted over all packs."""
        total = sum(p.params.capacity_ah for p in self.packs)
        return sum(p.soc * p.params.capacity_ah for p in self.packs) / total

    # ----- bus ----------------------------------------------------------------------------------

    async def start(self, bus_address: str) -> None:
        await asyncio.gather(*(pack.start(bus_address) for pack in self.packs))

    def publish(self) -> int:
        return sum(pack.publish() for pack in self.packs)

    async def run(self, interval: float = 1.0, *, speed: float = 1.0) -> None:
        """Step `interval * speed` simulated seconds and publish every `interval` s until stop()."""
        self._stop.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while not self._stop.is_set():
            self.step(interval * speed)
            self.publish()
            deadline += interval
            try:
                await asyncio.wait_for(self._stop.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                continue

    async def stop(self) -> None:
        """End run() and take every pack off the bus."""
        self._stop.set()
        await asyncio.gather(*(pack.stop() for pack in self.packs))
