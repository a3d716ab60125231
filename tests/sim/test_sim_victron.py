"""Simulated Victron devices: service names, mandatory paths (victron-contract §3.1), §5.1-§5.4."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from aggbatt.sim.device import SimDevice
from aggbatt.sim.victron import SimDcdc, SimMppt, SimMulti, SimShunt
from tests.busclient import SignalRecorder, get_items, get_value, set_value

MANDATORY = ["/Mgmt/ProcessName", "/Mgmt/ProcessVersion", "/Mgmt/Connection", "/DeviceInstance",
             "/ProductId", "/ProductName", "/FirmwareVersion", "/HardwareVersion", "/Connected",
             "/CustomName", "/Serial"]


@pytest.fixture
async def started(bus_address):
    sims: list[SimDevice] = []

    async def _start(device: SimDevice) -> SimDevice:
        await device.start(bus_address)
        sims.append(device)
        return device

    yield _start
    for sim in sims:
        await sim.stop()


@pytest.mark.parametrize("make, name", [
    (lambda: SimMulti("ttyS4", 276), "com.victronenergy.vebus.ttyS4"),
    (lambda: SimMppt("ttyS5", 278), "com.victronenergy.solarcharger.ttyS5"),
    (lambda: SimShunt("ttyS6", 279, mode="battery"), "com.victronenergy.battery.ttyS6"),
    (lambda: SimShunt("ttyS7", 280, mode="dcload"), "com.victronenergy.dcload.ttyS7"),
    (lambda: SimDcdc("ttyS8", 281), "com.victronenergy.dcdc.ttyS8"),
])
async def test_service_names_and_mandatory_paths(started, connect, make, name):
    device = await started(make())
    assert device.service_name == name
    items = await get_items(await connect(), name)
    for path in MANDATORY:
        assert path in items, path
        assert items[path]["Value"].signature != "ai", path  # valid, or systemcalc ignores it
    assert items["/Connected"]["Value"] == Variant("i", 1)
    assert items["/DeviceInstance"]["Value"] == Variant("i", device.device_instance)
    assert items["/FirmwareVersion"]["Value"].signature == "i"
    for path in ("/Dc/0/Voltage", "/Dc/0/Current", "/Dc/0/Power"):
        assert items[path]["Value"].signature == "d", path


async def test_multi_current_connected_and_state(started, connect):
    multi = await started(SimMulti("ttyS4", 276, custom_name="Multi", voltage=52.0))
    client = await connect()
    multi.set_current(-20.0)  # inverting: out of the battery
    multi.publish()
    items = await get_items(client, multi.service_name)
    assert items["/Dc/0/Current"]["Value"] == Variant("d", -20.0)
    assert items["/Dc/0/Power"]["Value"] == Variant("d", -1040.0)
    assert items["/State"]["Value"] == Variant("i", 9)
    assert items["/CustomName"]["Value"] == Variant("s", "Multi")
    assert "/Hub4/AssistantId" not in items
    multi.set_connected(False)
    multi.publish()
    assert await get_value(client, multi.service_name, "/Connected") == Variant("i", 0)
    # DVCC writes the limits into the Multi; the write sticks across publishes.
    path = "/BatteryOperationalLimits/MaxChargeCurrent"
    assert await set_value(client, multi.service_name, path, Variant("d", 80.0)) == 0
    multi.publish()
    assert await get_value(client, multi.service_name, path) == Variant("d", 80.0)


async def test_multi_with_ess_has_the_assistant_id(started, connect):
    multi = await started(SimMulti("ttyS9", 277, ess=True))
    items = await get_items(await connect(), multi.service_name)
    assert items["/Hub4/AssistantId"]["Value"] == Variant("i", 5)


async def test_mppt_yield(started, connect):
    mppt = await started(SimMppt("ttyS5", 278, voltage=54.0))
    client = await connect()
    rec = await SignalRecorder(client).start(mppt.service_name)
    mppt.set_current(10.0)
    assert mppt.publish() > 0
    await rec.wait_for(lambda: rec.of("ItemsChanged"))
    changed = rec.of("ItemsChanged")[0].body[0]
    assert changed["/Dc/0/Current"]["Value"] == Variant("d", 10.0)
    assert changed["/Yield/Power"]["Value"] == Variant("d", 540.0)
    assert changed["/State"]["Value"] == Variant("i", 3)


async def test_battery_shunt_is_a_monitor_without_info(started, connect):
    shunt = await started(SimShunt("ttyS6", 279, mode="battery", soc=73.0, current=-5.0))
    items = await get_items(await connect(), shunt.service_name)
    assert items["/ProductName"]["Value"] == Variant("s", "SmartShunt 500A/50mV")
    assert items["/Soc"]["Value"] == Variant("d", 73.0)
    assert items["/Dc/0/Current"]["Value"] == Variant("d", -5.0)
    assert not any(path.startswith("/Info/") for path in items)


async def test_dcload_shunt_has_no_soc(started, connect):
    shunt = await started(SimShunt("ttyS7", 280, mode="dcload", current=12.5))
    items = await get_items(await connect(), shunt.service_name)
    assert items["/ProductName"]["Value"] == Variant("s", "SmartShunt 500A/50mV")
    assert items["/Dc/0/Current"]["Value"] == Variant("d", 12.5)
    assert "/Soc" not in items
    with pytest.raises(ValueError):
        SimShunt("x", 1, mode="dcsystem")  # type: ignore[arg-type]


async def test_device_faults_invalidate_and_vanish(started, connect):
    mppt = await started(SimMppt("ttyS5", 278, current=3.0))
    client = await connect()
    mppt.invalidate("/Dc/0/Current")
    mppt.publish()
    assert (await get_value(client, mppt.service_name, "/Dc/0/Current")).value == []
    mppt.invalidate("/Dc/0/Current", False)
    mppt.publish()
    assert await get_value(client, mppt.service_name, "/Dc/0/Current") == Variant("d", 3.0)
    first = mppt.unique_name
    await mppt.vanish()
    assert mppt.publish() == 0
    await mppt.reappear()
    assert mppt.unique_name not in (None, first)
    assert await get_value(client, mppt.service_name, "/Dc/0/Current") == Variant("d", 3.0)


async def test_dcdc_input_side(started, connect):
    dcdc = await started(SimDcdc("ttyS8", 281, voltage=52.0, current=9.5, input_voltage=13.0,
                                 efficiency=0.95))
    items = await get_items(await connect(), dcdc.service_name)
    # 52 V * 9.5 A = 494 W out, 520 W in at 95 %, 40 A at 13 V.
    assert items["/Dc/In/P"]["Value"] == Variant("d", 520.0)
    assert items["/Dc/In/I"]["Value"] == Variant("d", 40.0)
