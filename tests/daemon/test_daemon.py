"""The daemon on a private bus with simulated packs, read the way Venus consumers read it."""

from __future__ import annotations

import asyncio
import time

import pytest
from dbus_fast import Variant

from aggbatt.bus.service import ServiceNameTaken
from aggbatt.daemon import Daemon
from aggbatt.sim.pack import SimPack
from tests.busclient import aggregate_values, get_items, set_value, wait_for_values
from tests.daemonharness import running, sim_pack, sim_packs
from tests.factories import fast_config

AGG = "com.victronenergy.battery.aggregate"
MANDATORY = ("/Mgmt/ProcessName", "/Mgmt/ProcessVersion", "/Mgmt/Connection", "/DeviceInstance",
             "/ProductId", "/ProductName", "/FirmwareVersion", "/Connected", "/CustomName")


async def test_published_service_follows_the_checklist(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        items = await get_items(h.client, AGG)
        for path in MANDATORY:
            assert path in items, path
        assert items["/Connected"]["Value"] == Variant("i", 1)
        assert items["/DeviceInstance"]["Value"].signature == "i"
        assert items["/ProductId"]["Value"].signature == "i"
        assert items["/ProductId"]["Value"].value not in (0xB004, 0xB009, 0xBA77, 0xBA44)
        for path in ("/Alarms/BmsCable", "/System/NrOfModulesOnline", "/Io/AllowToCharge"):
            assert items[path]["Value"].signature == "i", path
        for path in ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/Info/MaxChargeVoltage",
                     "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent"):
            assert items[path]["Value"].signature == "d", path
        values = await aggregate_values(h.client)
        assert values["/System/NrOfModulesOnline"] == 2
        # the device instance came from localsettings, the setting holds "battery:<n>"
        assert h.settings is not None
        claimed = h.settings.values["/Settings/Devices/aggbatt/ClassAndVrmInstance"]
        assert claimed == f"battery:{values['/DeviceInstance']}"


async def test_bank_values_combine_online_packs(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 100), bank_current=38.0) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2
                                       and v["/Dc/0/Current"] is not None
                                       and abs(v["/Dc/0/Current"] - 38.0) <= 0.12)  # 2 x 0.05 A noise + rounding
        assert values["/InstalledCapacity"] == pytest.approx(380.0)
        p1, p2 = h.bank.packs
        assert values["/Info/MaxChargeVoltage"] == pytest.approx(min(p1.cvl, p2.cvl), abs=0.01)


async def test_unequal_packs_bank_ccl_respects_each_pack_share(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 100)) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        ccl = values["/Info/MaxChargeCurrent"]
        for pack in h.bank.packs:
            share = pack.params.capacity_ah / 380.0  # at rest the share is the capacity share
            assert ccl * share <= pack.ccl + 0.1


async def test_a_pack_blocking_charge_zeroes_bank_ccl_without_waiting_for_the_tick(bus_address, tmp_path):
    # only the urgent path can be quick: the periodic tick comes every 10 s
    config = fast_config(service={"tick_interval": 10.0}, safety={"watchdog_timeout": 30.0})
    async with running(bus_address, tmp_path, sim_packs(280, 280), config=config) as h:
        await wait_for_values(h.client, lambda v: (v["/Info/MaxChargeCurrent"] or 0) > 0)
        h.bank.packs[1].block_charge(True)
        h.bank.packs[1].publish()
        started = time.monotonic()
        values = await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] == 0,
                                       timeout=2.0, interval=0.005)
        assert time.monotonic() - started < 2.0
        assert values["/System/NrOfModulesBlockingCharge"] == 1
        assert values["/Io/AllowToCharge"] == 0


async def test_a_block_holds_on_the_bus_while_the_blocking_pack_is_gone(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280), bank_current=30.0) as h:
        await wait_for_values(h.client, lambda v: (v["/Info/MaxChargeCurrent"] or 0) > 0
                              and v["/System/NrOfModulesOnline"] == 2)
        h.bank.packs[1].block_charge(True)
        await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] == 0)
        await h.bank.packs[1].vanish()
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        for _ in range(8):                   # several stale_after (0.5 s) periods
            values = await aggregate_values(h.client)
            assert values["/Info/MaxChargeCurrent"] == 0
            assert "blocks charging" in values["/Info/ChargeLimitation"]
            await asyncio.sleep(0.25)
        h.bank.packs[1].block_charge(False)
        await h.bank.packs[1].reappear()     # fresh data from the same pack lifts the block
        await wait_for_values(h.client, lambda v: (v["/Info/MaxChargeCurrent"] or 0) > 0)


async def test_a_hung_driver_at_rest_is_found_by_a_probe_and_a_quiet_live_one_is_not(
        bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:   # at rest: both are quiet
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        h.bank.packs[1].hang(True)
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        assert values["/System/NrOfModulesOnline"] == 1
        reasons = {p["id"]: p["reason"] for p in h.daemon.status()["packs"]}
        assert reasons["P0"] is None                          # answered every probe
        assert "did not answer a probe" in reasons["P1"]


async def test_frozen_pack_goes_offline_and_limits_come_from_the_rest(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280, 280), bank_current=30.0) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 3)
        h.bank.packs[2].freeze(True)
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        assert values["/System/NrOfModulesOnline"] == 2
        assert values["/Alarms/BmsCable"] == 1  # a warning names the lost pack
        assert values["/InstalledCapacity"] == pytest.approx(560.0)
        h.bank.packs[2].freeze(False)
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 3)


async def test_vanished_pack_counts_offline_and_is_readmitted_under_a_new_unique_name(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        pack = h.bank.packs[0]
        old_owner = pack.unique_name
        await pack.vanish()
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        assert values["/System/NrOfModulesOnline"] == 1
        await pack.reappear()
        assert pack.unique_name != old_owner
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2
                              and v["/System/NrOfModulesOffline"] == 0)


async def test_no_pack_online_invalidates_limits_and_raises_bms_cable(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        await wait_for_values(h.client, lambda v: v["/Info/MaxChargeVoltage"] is not None)
        h.bank.packs[0].link_lost(True)
        values = await wait_for_values(h.client, lambda v: v["/Info/MaxChargeVoltage"] is None)
        assert values["/Info/MaxChargeCurrent"] is None
        assert values["/Info/MaxDischargeCurrent"] is None
        assert values["/Alarms/BmsCable"] == 2


async def test_garbage_values_never_crash_and_leave_the_pack_out(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        h.bank.packs[1].set_override("/Info/MaxChargeCurrent", "lots")
        h.bank.packs[1].set_override("/Dc/0/Voltage", 1000.0)
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/Alarms/InternalFailure"] in (0, None)
        assert h.daemon.ticks > 0


async def test_settings_service_absent_at_start(bus_address, tmp_path):
    config = fast_config(service={"device_instance": 77})
    async with running(bus_address, tmp_path, sim_packs(280), config=config, with_settings=False) as h:
        values = await aggregate_values(h.client)
        assert values["/DeviceInstance"] == 77
        assert values["/System/NrOfModulesOnline"] == 1


async def test_custom_name_is_written_to_localsettings(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        assert await set_value(h.client, AGG, "/CustomName", Variant("s", "Shed bank")) == 0
        assert h.settings is not None
        for _ in range(100):
            if h.settings.values.get("/Settings/Devices/aggbatt/CustomName") == "Shed bank":
                break
            await asyncio.sleep(0.02)
        assert h.settings.values["/Settings/Devices/aggbatt/CustomName"] == "Shed bank"


async def test_second_instance_is_refused_with_a_clear_message(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280)):
        second = Daemon(fast_config(), bus_address, tmp_path / "state2")
        with pytest.raises(ServiceNameTaken, match="another instance"):
            await second.start()
        await second.close()


async def test_a_second_instance_writes_no_state_file(bus_address, tmp_path):
    """It shares the state dir of the running instance, whose files are not its to write."""
    config = fast_config(soc={"strategy": "coulomb_counter"}, charge={"strategy": "own"})
    async with running(bus_address, tmp_path, sim_packs(280, 280), config=config) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        state = tmp_path / "state"
        for _ in range(200):  # the running instance saves the SoC it initialised
            if (state / "soc.json").exists():
                break
            await asyncio.sleep(0.02)
        before = {p.name: p.stat().st_ino for p in state.iterdir()}
        assert {"packs.json", "soc.json"} <= before.keys()
        second = Daemon(config, bus_address, state)
        with pytest.raises(ServiceNameTaken):
            await second.start()
        await second.close()
        assert {p.name: p.stat().st_ino for p in state.iterdir()} == before


async def test_exception_in_tick_publishes_fail_safe_limits(bus_address, tmp_path, monkeypatch):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: (v["/Info/MaxChargeCurrent"] or 0) > 0)

        def broken(*args, **kwargs):
            raise ZeroDivisionError("injected")

        monkeypatch.setattr(h.daemon.engine, "tick", broken)
        values = await wait_for_values(h.client, lambda v: v["/Alarms/InternalFailure"] == 2)
        assert values["/Info/MaxChargeCurrent"] == 0
        dcls = [p.dcl for p in h.bank.packs]
        assert values["/Info/MaxDischargeCurrent"] <= min(dcls) + 0.1
        assert values["/Info/MaxChargeVoltage"] <= min(p.cvl for p in h.bank.packs) + 0.01


async def test_sixteen_pack_bank(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(*([100.0] * 16))) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 16)
        assert values["/InstalledCapacity"] == pytest.approx(1600.0)


async def test_known_packs_survive_a_restart_and_a_missing_one_counts_offline(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/System/NrOfModulesOffline"] == 1


async def test_a_block_survives_a_restart_while_its_pack_is_missing(bus_address, tmp_path):
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        h.bank.packs[1].block_charge(True)
        await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] == 0)
    async with running(bus_address, tmp_path, sim_packs(280)) as h:   # P1 is missing after it
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/Info/MaxChargeCurrent"] == 0
        assert "P1 blocks charging" in values["/Info/ChargeLimitation"]
    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:   # back, not blocking
        await wait_for_values(h.client, lambda v: (v["/Info/MaxChargeCurrent"] or 0) > 0)


async def test_forget_packs_drops_a_pack_removed_for_good(bus_address, tmp_path):
    import io

    from aggbatt.tools.status import forget_missing

    async with running(bus_address, tmp_path, sim_packs(280, 280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        out, err = io.StringIO(), io.StringIO()
        assert await forget_missing(bus_address, AGG, out, err) == 0
        assert "forgot: P1" in out.getvalue()
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 0)
        assert values["/Alarms/BmsCable"] == 0
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)
        assert values["/System/NrOfModulesOffline"] == 0  # the forgotten pack stays forgotten


async def test_a_failure_after_the_engine_does_not_stop_the_tick_loop(bus_address, tmp_path,
                                                                      monkeypatch):
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 1)

        def broken(known):
            raise RuntimeError("state dir vanished")

        monkeypatch.setattr(h.daemon.store, "save_known_packs", broken)
        # A new pack changes the known set, so the next tick tries to save it and raises.
        extra = SimPack(sim_pack("P9", 100),
                        name_suffix="extra9")
        await extra.start(bus_address)
        extra.step(0.0, 0.0)
        extra.publish()
        try:
            values = await wait_for_values(h.client,
                                           lambda v: v["/System/NrOfModulesOnline"] == 2)
            assert values["/InstalledCapacity"] == pytest.approx(380.0)
            before = h.daemon.ticks
            for _ in range(100):
                if h.daemon.ticks >= before + 2:
                    break
                await asyncio.sleep(0.05)
            assert h.daemon.ticks >= before + 2
            await asyncio.sleep(1.2)  # at least one periodic tick after the failures
            assert not h.loop_task.done()
        finally:
            monkeypatch.undo()
            await extra.stop()
