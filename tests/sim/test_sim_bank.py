"""Simulated bank: current split, blocking, SoC, and the 1 Hz run loop on the bus."""

from __future__ import annotations

import asyncio

import pytest
from dbus_fast import Message, Variant
from hypothesis import given
from hypothesis import strategies as st

from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack_model import PackParams
from tests.busclient import SignalRecorder, get_items


def three(socs=(50.0, 50.0, 50.0), caps=(100.0, 200.0, 300.0)) -> SimBank:
    return SimBank([PackParams(capacity_ah=c, soc=s) for c, s in zip(caps, socs, strict=True)])


def test_split_by_capacity():
    bank = three()
    assert bank.split(60.0) == pytest.approx([10.0, 20.0, 30.0])
    assert bank.split(-120.0) == pytest.approx([-20.0, -40.0, -60.0])


def test_blocked_pack_takes_no_charge_current():
    bank = three()
    bank.pack(2).block_charge()
    assert bank.split(60.0) == pytest.approx([15.0, 0.0, 45.0])
    assert bank.split(-60.0) == pytest.approx([-10.0, -20.0, -30.0])  # discharge still shared
    bank.bank_current = 60.0
    soc2 = bank.pack(2).soc
    bank.step(10.0)
    assert bank.pack(2).soc == soc2
    assert bank.pack(1).current == pytest.approx(15.0)


def test_nobody_takes_current_when_all_block():
    bank = three()
    for pack in bank.packs:
        pack.block_discharge()
    assert bank.split(-30.0) == [0.0, 0.0, 0.0]


def test_true_soc_is_capacity_weighted():
    bank = three(socs=(20.0, 50.0, 80.0))
    assert bank.true_soc() == pytest.approx((20 * 100 + 50 * 200 + 80 * 300) / 600)


@given(st.floats(-100.0, 100.0))
def test_proportional_split_keeps_socs_together(amps):
    bank = three()
    bank.bank_current = amps
    for _ in range(5):
        bank.step(60.0)
    socs = [p.soc for p in bank.packs]
    assert max(socs) - min(socs) < 1e-9
    # 5 min of `amps` into 600 Ah
    assert bank.true_soc() == pytest.approx(50.0 + amps * 300 / 36 / 600, abs=1e-9)


def test_profile_drives_the_bank_current():
    bank = three()
    bank.profile = lambda t: 60.0 if t < 5.0 else -60.0
    for _ in range(10):
        bank.step(1.0)
    assert bank.true_soc() == pytest.approx(50.0)
    assert bank.pack(3).current == pytest.approx(-30.0)
    assert bank.time == 10.0


def test_defaults_are_distinct():
    bank = SimBank(count=4, cells=8, capacity_ah=100.0)
    assert [p.service_name for p in bank.packs] == [
        f"com.victronenergy.battery.sim{n}" for n in range(1, 5)]
    assert [p.device_instance for p in bank.packs] == [1, 2, 3, 4]
    assert len({p.params.serial for p in bank.packs}) == 4
    assert all(p.params.cells == 8 and p.params.capacity_ah == 100.0 for p in bank.packs)
    with pytest.raises(IndexError):
        bank.pack(5)
    with pytest.raises(ValueError):
        SimBank([])


async def test_run_publishes_until_stopped(bus_address, connect):
    bank = SimBank(count=2, cells=4, bank_current=20.0)
    await bank.start(bus_address)
    client = await connect()
    rec = await SignalRecorder(client).start(bank.pack(2).service_name)
    runner = asyncio.create_task(bank.run(interval=0.01))
    try:
        await rec.wait_for(lambda: any(
            m.path == "/Dc/0/Current" and m.body[0]["Value"] == Variant("d", 10.0)
            for m in rec.signals))
    finally:
        await bank.stop()
        await asyncio.wait_for(runner, 2.0)
    assert bank.time > 0
    assert all(p.unique_name is None for p in bank.packs)
    reply = await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                      interface="org.freedesktop.DBus", member="ListNames"))
    assert not any(name.startswith("com.victronenergy.battery.sim") for name in reply.body[0])


async def test_started_bank_packs_are_readable(bus_address, connect):
    bank = SimBank(count=3, cells=16)
    await bank.start(bus_address)
    try:
        client = await connect()
        for n, pack in enumerate(bank.packs, start=1):
            items = await get_items(client, pack.service_name)
            assert items["/DeviceInstance"]["Value"] == Variant("i", n)
    finally:
        await bank.stop()
