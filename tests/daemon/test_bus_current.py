"""The bank current from Victron devices, as a Venus consumer sees it on the aggregate.

Simulated Multi, MPPT, SmartShunts and DC-DC converter publish on the private bus next to
simulated packs whose BMS current sum is -7 A; the real daemon runs in-process. Like their real
drivers, the devices send only changes: a device whose values stay as set is silent on the bus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from aggbatt.sim.victron import SimDcdc, SimMppt, SimMulti, SimShunt
from tests.busclient import SignalRecorder, aggregate_values, near, wait_for_values
from tests.daemonharness import Harness, running, sim_packs
from tests.factories import fast_config

BMS_SUM = -7.0
NOISE = 0.15           # two packs' current noise (2 x 0.05 A) plus rounding
Device = Any           # one of the aggbatt.sim.victron devices


@asynccontextmanager
async def victron(bus_address: str, *devices: Device) -> AsyncIterator[None]:
    for device in devices:
        await device.start(bus_address)
        device.publish()

    async def alive() -> None:
        while True:
            for device in devices:
                device.publish()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(alive())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for device in devices:
            await device.stop()


@asynccontextmanager
async def system(bus_address: str, tmp_path: Path, devices: Sequence[Device],
                 **current: Any) -> AsyncIterator[Harness]:
    config = fast_config(service={"tick_interval": 0.1},
                         current={"source": "victron_devices", "stale_after": 0.3, **current})
    async with victron(bus_address, *devices):
        async with running(bus_address, tmp_path, sim_packs(280.0, 100.0), config=config,
                           bank_current=BMS_SUM) as h:
            yield h


def current_is(expected: float, tolerance: float = 0.011):
    return near("/Dc/0/Current", expected, tolerance)


def fallback(values: dict[str, Any]) -> bool:
    return current_is(BMS_SUM, NOISE)(values)


async def test_multi_solar_charger_and_shunts_add_up(bus_address, tmp_path):
    multi = SimMulti(current=-20.0)
    devices = [multi, SimMppt(current=30.0), SimShunt(device_instance=279, current=-2.0),
               SimShunt("ttyS7", device_instance=290, mode="dcload", current=6.0)]
    async with system(bus_address, tmp_path, devices, shunts=[279, 290]) as h:
        # 30 A solar - 20 A inverting - 2 A through the battery-mode shunt - 6 A DC load
        values = await wait_for_values(h.client, current_is(2.0))
        assert abs(values["/Dc/0/Power"] - values["/Dc/0/Voltage"] * 2.0) <= 1.0   # V x I, not sum P
        multi.set_connected(False)           # the vebus service stays, its current no longer counts
        await wait_for_values(h.client, current_is(22.0))
        assert h.daemon.status()["current_source"]["source"] == "victron"


async def test_dcload_sign_and_dcdc_charger(bus_address, tmp_path):
    devices = [SimMppt(current=10.0), SimShunt(device_instance=290, mode="dcload", current=4.0),
               SimDcdc(current=8.0)]
    async with system(bus_address, tmp_path, devices, shunts=[290], dcload_sign=1,
                      include_dcdc=True) as h:
        await wait_for_values(h.client, current_is(10.0 + 4.0 + 8.0))


async def test_a_battery_mode_shunt_alone_is_the_bank_current(bus_address, tmp_path):
    devices = [SimMulti(current=-20.0), SimMppt(current=30.0),
               SimShunt(device_instance=279, custom_name="Bank", current=-12.5),
               SimShunt("ttyS7", device_instance=290, mode="dcload", current=6.0)]
    async with system(bus_address, tmp_path, devices, all_shunts=True, shunt_alone=True) as h:
        await wait_for_values(h.client, current_is(-12.5))


async def test_unselected_shunts_are_not_counted(bus_address, tmp_path):
    devices = [SimMppt(current=30.0), SimShunt(device_instance=279, custom_name="House", current=-2.0),
               SimShunt("ttyS7", device_instance=280, custom_name="Boat", current=-5.0)]
    async with system(bus_address, tmp_path, devices, shunts=["Boat"]) as h:
        await wait_for_values(h.client, current_is(25.0))


async def test_a_device_vanishing_mid_run_falls_back_once_and_returns(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggbatt")
    mppt = SimMppt(current=30.0)
    async with system(bus_address, tmp_path, [SimMulti(current=-20.0), mppt]) as h:
        await wait_for_values(h.client, current_is(10.0))
        await mppt.vanish()
        await wait_for_values(h.client, fallback)
        status = h.daemon.status()["current_source"]
        assert status["source"] == "bms"
        assert status["problems"] == ["com.victronenergy.solarcharger.ttyS5 vanished"]
        await asyncio.sleep(0.3)             # several ticks in fallback: still one warning
        await mppt.reappear()
        await wait_for_values(h.client, current_is(10.0))
    lost = [r for r in caplog.records if "Victron devices lost" in r.getMessage()]
    back = [r for r in caplog.records if "Victron devices again" in r.getMessage()]
    assert len(lost) == 1 and "solarcharger.ttyS5 vanished" in lost[0].getMessage()
    assert len(back) == 1


async def test_steady_devices_that_send_nothing_stay_the_bank_current(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggbatt")
    load = SimShunt("ttyS7", device_instance=290, mode="dcload", current=6.0)
    devices = [SimMulti(current=-20.0), SimMppt(current=30.0), load]
    async with system(bus_address, tmp_path, devices, shunts=[290]) as h:
        await wait_for_values(h.client, current_is(4.0))
        quiet = await SignalRecorder(h.client).start(load.unique_name)
        loop = asyncio.get_running_loop()
        end = loop.time() + 6 * 0.3             # six times current.stale_after
        currents = []
        while loop.time() < end:
            currents.append((await aggregate_values(h.client))["/Dc/0/Current"])
            await asyncio.sleep(0.05)
        assert quiet.signals == []            # the DC-load shunt really said nothing
        assert all(abs(c - 4.0) <= 0.011 for c in currents), currents
        assert h.daemon.status()["current_source"]["source"] == "victron"
    assert not [r for r in caplog.records if "Victron devices" in r.getMessage()]


async def test_a_device_losing_its_link_falls_back_at_once_and_returns(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggbatt")
    load = SimShunt("ttyS7", device_instance=290, mode="dcload", current=6.0)
    async with system(bus_address, tmp_path, [SimMppt(current=30.0), load], shunts=[290]) as h:
        await wait_for_values(h.client, current_is(24.0))
        load.set_connected(False)
        await wait_for_values(h.client, fallback)
        assert h.daemon.status()["current_source"]["problems"] == [
            "com.victronenergy.dcload.ttyS7: /Connected is 0 (device link lost)"]
        await asyncio.sleep(0.3)             # several ticks in fallback: still one warning
        load.set_connected(True)
        await wait_for_values(h.client, current_is(24.0))
    lost = [r.getMessage() for r in caplog.records if "Victron devices lost" in r.getMessage()]
    back = [r for r in caplog.records if "Victron devices again" in r.getMessage()]
    assert len(lost) == 1 and "dcload.ttyS7: /Connected is 0" in lost[0]
    assert len(back) == 1


async def test_a_shunt_with_an_invalid_current_falls_back(bus_address, tmp_path):
    shunt = SimShunt(device_instance=279, current=-2.0)
    async with system(bus_address, tmp_path, [SimMppt(current=30.0), shunt], shunts=[279]) as h:
        await wait_for_values(h.client, current_is(28.0))
        shunt.invalidate("/Dc/0/Current")
        await wait_for_values(h.client, fallback)
        assert h.daemon.status()["current_source"]["problems"] == [
            "com.victronenergy.battery.ttyS6: /Dc/0/Current is None"]


async def test_a_configured_shunt_that_never_appears_is_reported(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggbatt")
    async with system(bus_address, tmp_path, [SimMppt(current=30.0)], shunts=["Garage", 279]) as h:
        await wait_for_values(h.client, fallback)
        status = h.daemon.status()["current_source"]
        assert status["missing_shunts"] == ["'Garage'", "DeviceInstance 279"]
        await asyncio.sleep(0.4)             # past the start-up grace (current.stale_after)
    warnings = [r.getMessage() for r in caplog.records if "Victron devices lost" in r.getMessage()]
    assert len(warnings) == 1
    assert "configured shunt 'Garage' not found" in warnings[0]
    assert "configured shunt DeviceInstance 279 not found" in warnings[0]


async def test_block_policy_zeroes_both_limits_while_the_source_is_lost(bus_address, tmp_path):
    mppt = SimMppt(current=30.0)
    async with system(bus_address, tmp_path, [mppt], on_source_lost="block") as h:
        values = await wait_for_values(h.client, current_is(30.0))
        assert values["/Info/MaxChargeCurrent"] > 0 and values["/Info/MaxDischargeCurrent"] > 0
        await mppt.vanish()
        values = await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] == 0
                                       and v["/Info/MaxDischargeCurrent"] == 0)
        assert fallback(values)
        await mppt.reappear()
        await wait_for_values(h.client, lambda v: (v["/Info/MaxChargeCurrent"] or 0) > 0
                              and (v["/Info/MaxDischargeCurrent"] or 0) > 0)


@pytest.mark.parametrize("bad", [None, "x"])
async def test_a_connected_multi_with_garbage_current_falls_back(bus_address, tmp_path, bad):
    multi = SimMulti(current=-20.0)
    async with system(bus_address, tmp_path, [multi, SimMppt(current=30.0)]) as h:
        await wait_for_values(h.client, current_is(10.0))
        if bad is None:
            multi.invalidate("/Dc/0/Current")
        else:
            multi.set_override("/Dc/0/Current", bad)
        await wait_for_values(h.client, fallback)
        assert h.daemon.ticks > 0
