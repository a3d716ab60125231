"""The GX page's paths on a private bus, read the way gui-v2 (through dbus or MQTT) reads them:
one GetItems, then ItemsChanged / PropertiesChanged signals."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.signature import Variant

from aggbatt.sim.pack_model import PackParams
from tests.busclient import SignalRecorder, aggregate_values, get_items, wait_for_values
from tests.daemonharness import running, sim_pack
from tests.factories import fast_config

pytestmark = pytest.mark.bus

AGG = "com.victronenergy.battery.aggregate"


def packs() -> list[PackParams]:
    return [sim_pack(f"P{i}", c, soc=60.0, custom_name=f"Rack {i}")
            for i, c in enumerate((280.0, 100.0))]


def signalled(signals: list[Message], path: str) -> list[Any]:
    """Every value `path` was given by the recorded signals, in order."""
    seen: list[Any] = []
    for msg in signals:
        if msg.member == "ItemsChanged":
            entry = msg.body[0].get(path)
            if entry is not None:
                seen.append(entry["Value"].value)
        elif msg.member == "PropertiesChanged" and msg.path == path:
            seen.append(msg.body[0]["Value"].value)
    return seen


async def test_a_client_sees_each_pack_and_the_bank_decisions(bus_address, tmp_path):
    async with running(bus_address, tmp_path, packs()) as h:
        await wait_for_values(h.client, lambda v: v.get("/Packs/Count") == 2
                              and v.get("/Packs/1/State") == "online")
        items = await get_items(h.client, AGG)
        assert items["/Packs/Count"]["Value"] == Variant("i", 2)
        assert items["/Packs/0/Name"]["Value"] == Variant("s", "Rack 0")
        assert items["/Packs/1/Id"]["Value"] == Variant("s", "P1")
        assert items["/Packs/1/Service"]["Value"].value.startswith("com.victronenergy.battery.")
        for leaf in ("Dc/0/Voltage", "Dc/0/Current", "Soc", "Info/MaxChargeVoltage",
                     "Info/MaxChargeCurrent", "Info/MaxDischargeCurrent"):
            assert items[f"/Packs/0/{leaf}"]["Value"].signature == "d", leaf
        assert items["/Packs/0/BlockingCharge"]["Value"] == Variant("i", 0)
        assert items["/Packs/0/DataAge"]["Value"].signature == "i"
        assert items["/Packs/0/Dc/0/Voltage"]["Text"].value.endswith("V")
        assert items["/Aggbatt/SocStrategy"]["Value"] == Variant("s", "bms_average")
        assert items["/Aggbatt/ChargeStrategy"]["Value"] == Variant("s", "passthrough")
        assert items["/Aggbatt/CurrentSource"]["Value"] == Variant("s", "bms_sum")

        recorder = await SignalRecorder(h.client).start(AGG)
        h.bank.packs[1].block_charge(True)
        h.bank.packs[1].publish()
        await recorder.wait_for(lambda: 1 in signalled(recorder.signals, "/Packs/1/BlockingCharge"))
        reasons = signalled(recorder.signals, "/Packs/1/BlockingReason")
        assert reasons and "charge" in reasons[-1]
        assert 1 not in signalled(recorder.signals, "/Packs/0/BlockingCharge")


async def test_the_stock_system_and_history_sub_pages_are_filled(bus_address, tmp_path):
    async with running(bus_address, tmp_path, packs(), bank_current=30.0) as h:
        values = await wait_for_values(
            h.client, lambda v: v.get("/System/NrOfModulesOnline") == 2
            and v.get("/History/MaximumCellVoltage") is not None)
        items = await get_items(h.client, AGG)
        assert items["/System/NrOfBatteries"]["Value"] == Variant("i", 2)
        assert items["/System/BatteriesParallel"]["Value"] == Variant("i", 2)
        assert items["/System/BatteriesSeries"]["Value"] == Variant("i", 1)
        assert "/NumberOfBmses" not in items
        highest = max([(await aggregate_values(h.client, p.service_name))["/History/MaximumCellVoltage"]
                       for p in h.bank.packs])
        # the highest cell of the bank's history, read a moment before the packs were read
        assert highest - 0.01 <= values["/History/MaximumCellVoltage"] <= highest
        assert items["/History/MaximumCellVoltage"]["Value"].signature == "d"
        assert items["/History/ChargedEnergy"]["Text"].value.endswith("kWh")


async def test_own_charge_control_shows_its_balancing_record_and_feed_in_guard(bus_address, tmp_path):
    config = fast_config(charge={"strategy": "own"}, feedin={"guard": True})
    async with running(bus_address, tmp_path, packs(), config=config) as h:
        values = await wait_for_values(h.client, lambda v: v.get("/Aggbatt/FeedInGuard") is not None)
        assert values["/Aggbatt/ChargeStrategy"] == "own"
        assert values["/Aggbatt/Balancing/Phase"] in ("idle", "raising", "holding")
        assert values["/Aggbatt/Balancing/Last"] == "never"          # a fresh state dir
        assert values["/Aggbatt/Balancing/NextDue"] == date.today().isoformat()  # never: due now
        assert values["/Aggbatt/FeedInGuard"] == "idle"


async def test_without_history_the_packs_history_is_not_read(bus_address, tmp_path):
    config = fast_config(discovery={"history": False})
    async with running(bus_address, tmp_path, packs(), config=config, bank_current=30.0) as h:
        values = await wait_for_values(h.client, lambda v: v.get("/System/NrOfModulesOnline") == 2)
        assert values["/System/NrOfBatteries"] == 2
        assert all(v is None for p, v in values.items() if p.startswith("/History/"))
