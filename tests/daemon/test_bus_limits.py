"""Bad input on the bus: values from localsettings, foreign clients and packs that are out of any
sensible range must never make the aggregate unreadable, grow memory or flood the log."""

from __future__ import annotations

import asyncio
import logging

import pytest
from dbus_fast import Variant

from aggbatt.bus.service import BusItemService
from aggbatt.sim.pack_model import PackParams
from tests.busclient import aggregate_values, get_items, get_value, set_value, wait_for_values
from tests.daemonharness import running, sim_pack, sim_packs
from tests.factories import fast_config

AGG = "com.victronenergy.battery.aggregate"
INSTANCE_SETTING = "/Settings/Devices/aggbatt/ClassAndVrmInstance"
NAME_SETTING = "/Settings/Devices/aggbatt/CustomName"


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


# ----- /DeviceInstance ----------------------------------------------------------------------------

@pytest.mark.parametrize("stored", ["battery:99999999999999999999", "battery:-5", "battery:65536",
                                    "battery:" + "9" * 5000, "battery:\u00b2"])
async def test_unusable_instance_in_localsettings_falls_back_to_the_config(
        bus_address, tmp_path, caplog, stored):
    caplog.set_level(logging.INFO)
    async with running(bus_address, tmp_path, sim_packs(280, noise=False),
                       settings_initial={INSTANCE_SETTING: stored, NAME_SETTING: "Shed"}) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/DeviceInstance"] == 100  # service.device_instance of the defaults
        assert values["/CustomName"] == "Shed"  # localsettings is still used for the rest
        assert len(warnings_about(caplog, "ClassAndVrmInstance")) == 1


async def test_a_value_the_wire_cannot_carry_makes_only_its_path_invalid(connect, caplog):
    svc = BusItemService(await connect(), "com.victronenergy.battery.limitstest")
    svc.add_path("/DeviceInstance", 2**70, kind=int)
    svc.add_path("/Serial", "A\x00B", kind=str)
    svc.add_path("/ProductName", "fine", kind=str)
    await svc.register()
    for _ in range(3):
        svc["/DeviceInstance"] = -(2**80)
        svc["/Serial"] = "\ud800"
        svc.publish()
    items = await get_items(await connect(), "com.victronenergy.battery.limitstest")
    assert items["/DeviceInstance"]["Value"].signature == "ai"
    assert items["/Serial"]["Value"].signature == "ai"
    assert items["/ProductName"]["Value"].value == "fine"
    assert len(warnings_about(caplog, "cannot be sent on D-Bus")) == 2


# ----- /CustomName --------------------------------------------------------------------------------

async def test_custom_name_takes_bounded_text_only_from_a_foreign_client(bus_address, tmp_path,
                                                                         caplog):
    caplog.set_level(logging.INFO)
    async with running(bus_address, tmp_path, sim_packs(280, noise=False)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert await set_value(h.client, AGG, "/CustomName", Variant("s", "Shed")) == 0
        for bad in (Variant("i", 42), Variant("as", ["Shed", "bank"]), Variant("d", 1.5),
                    Variant("s", "x" * 65), Variant("s", "x" * 1_000_000)):
            assert await set_value(h.client, AGG, "/CustomName", bad) != 0, bad.signature
        assert await set_value(h.client, AGG, "/CustomName", Variant("s", "n" * 64)) == 0
        await wait_for_values(h.client, lambda v: v["/CustomName"] == "n" * 64)
        assert h.settings is not None
        await until_true(lambda: h.settings.values.get(NAME_SETTING) == "n" * 64)
        assert len(warnings_about(caplog, "/CustomName: refused")) == 1  # five refusals


async def test_custom_name_flood_with_localsettings_frozen_keeps_one_write_in_flight(
        bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running(bus_address, tmp_path, sim_packs(280, noise=False)) as h:
        sim = h.settings
        assert sim is not None
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        writes = ("SetValue", NAME_SETTING)
        sim.freeze()
        for i in range(300):
            assert await set_value(h.client, AGG, "/CustomName", Variant("s", f"a{i}")) == 0
        assert sim.calls[writes] == 1  # the rest wait for it, coalesced into the latest
        await until_true(lambda: sim.calls[writes] == 2)  # after the first one timed out
        for i in range(300):
            assert await set_value(h.client, AGG, "/CustomName", Variant("s", f"b{i}")) == 0
        sim.thaw()
        await until_true(lambda: sim.values.get(NAME_SETTING) == "b299")
        assert sim.calls[writes] == 3  # a0 (too late), a299, b299
        assert (await aggregate_values(h.client))["/CustomName"] == "b299"
        assert len(warnings_about(caplog, "CustomName")) == 1


async def until_true(check, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# ----- text from packs ----------------------------------------------------------------------------

async def test_long_pack_texts_are_cut_before_they_are_republished(bus_address, tmp_path):
    huge = PackParams(capacity_ah=280, serial="S" * 10_000, custom_name="N" * 10_000,
                      product_name="SerialBattery " + "P" * 10_000)
    config = fast_config(discovery={"cell_voltages": True})
    async with running(bus_address, tmp_path, [huge, sim_pack("P1", noise=False)],
                       config=config) as h:
        pack = h.bank.packs[0]
        pack.drift_cell(1, 80.0)  # its cell is the bank's highest
        pack.set_override("/System/MaxVoltageCellId", "C" * 100_000)
        values = await wait_for_values(
            h.client, lambda v: v["/System/NrOfModulesOnline"] == 2
            and (v["/System/MaxVoltageCellId"] or "").startswith("N"))
        assert values["/System/MaxVoltageCellId"] == "N" * 64 + ": " + "C" * 64
        sent = await get_value(h.client, pack.service_name, "/System/MaxVoltageCellId")
        assert len(sent.value) == 100_000  # the pack really sends all of it
        items = await get_items(h.client, AGG)
        assert [p for p in items if p.startswith("/Voltages/")]  # the cells are published too
        for path, entry in items.items():
            assert len(path) <= 100, path[:100]
            assert len(entry["Text"].value) <= 256, path
            if entry["Value"].signature == "s":
                assert len(entry["Value"].value) <= 256, path
        status = h.daemon.status()
        assert {p["id"] for p in status["packs"]} == {"S" * 64, "P1"}
