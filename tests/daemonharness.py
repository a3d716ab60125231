"""Start simulated packs, a simulated settings service and the real daemon on the private bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus

from aggbatt.config import Config
from aggbatt.daemon import Daemon
from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack_model import PackParams
from aggbatt.sim.settings import SimSettings
from tests.factories import fast_config

# A real BMS's reading noise while current flows: a live pack's values keep moving, as on a GX.
BMS_NOISE: dict[str, Any] = {"noise_a": 0.05, "noise_mv": 1.0}


def sim_pack(serial: str, capacity: float = 280.0, *, noise: bool = True,
             **params: Any) -> PackParams:
    """One simulated pack, with BMS_NOISE unless noise=False; `params` as PackParams takes them."""
    return PackParams(capacity_ah=capacity, serial=serial, **(BMS_NOISE if noise else {}), **params)


def sim_packs(*capacities: float, noise: bool = True, **params: Any) -> list[PackParams]:
    """Simulated packs P0, P1, ... of these capacities (Ah), all with the same `params`."""
    return [sim_pack(f"P{i}", c, noise=noise, **params) for i, c in enumerate(capacities)]


class Harness:
    def __init__(self, bank: SimBank, daemon: Daemon, settings: SimSettings | None, client: MessageBus,
                 loop_task: asyncio.Task[None]):
        self.bank = bank
        self.loop_task = loop_task  # the daemon's run_forever
        self.daemon = daemon
        self.settings = settings
        self.client = client


@asynccontextmanager
async def running(bus_address: str, tmp_path: Path, packs: list[PackParams] | None = None, *,
                  config: Config | None = None, with_settings: bool = True,
                  publish_interval: float = 0.1, bank_current: float = 0.0,
                  settings_initial: Mapping[str, Any] | None = None,
                  prepare: Callable[[SimBank], None] | None = None) -> AsyncIterator[Harness]:
    """Bank publishing every `publish_interval` s (faster than real time: keeps tests short);
    `settings_initial`: settings localsettings holds before the daemon starts; `prepare` sets
    faults on the bank before it goes on the bus."""
    settings = None
    if with_settings:
        settings = SimSettings(await MessageBus(bus_address=bus_address).connect(),
                               str(tmp_path / "settings.json"), initial=settings_initial or {})
        await settings.start()
    bank = SimBank(packs, bank_current=bank_current)
    if prepare is not None:
        prepare(bank)
    await bank.start(bus_address)
    bank.step(0.0)
    bank.publish()
    bank_task = asyncio.create_task(bank.run(publish_interval))
    daemon = Daemon(config or fast_config(), bus_address, tmp_path / "state")
    await daemon.start()
    loop_task = asyncio.create_task(daemon.run_forever())
    client = await MessageBus(bus_address=bus_address).connect()
    try:
        yield Harness(bank, daemon, settings, client, loop_task)
    finally:
        client.disconnect()
        daemon.stop()
        await asyncio.gather(loop_task, return_exceptions=True)
        await daemon.close()
        bank_task.cancel()
        await asyncio.gather(bank_task, return_exceptions=True)
        await bank.stop()
        if settings is not None:
            await settings.close()
