"""Becoming the system's battery: /Settings/SystemSetup/BatteryService and BmsInstance on the
private bus, written by the library, the daemon's config switch and `aggbatt select-battery`."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus

from aggbatt.bus.settings import SettingsClient, SettingsUnavailable
from aggbatt.daemon.selection import (
    BATTERY_SERVICE,
    BMS_INSTANCE,
    SELECTION_FILE,
    SelectionError,
    command,
    restore,
    select,
)
from aggbatt.daemon.store import StateStore
from aggbatt.sim.settings import SimSettings
from tests.busclient import aggregate_values
from tests.daemonharness import running, sim_packs
from tests.factories import fast_config

# What systemcalc creates on a GX (victron-contract §5.6): automatic battery monitor and BMS.
SYSTEMCALC = {BATTERY_SERVICE: "default", BMS_INSTANCE: -1}


@asynccontextmanager
async def localsettings(bus_address: str, initial: dict | None = None) -> AsyncIterator[SimSettings]:
    sim = SimSettings(await MessageBus(bus_address=bus_address).connect(),
                      initial=SYSTEMCALC if initial is None else initial)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()
        sim.bus.disconnect()


def chosen(sim: SimSettings) -> dict:
    return {path: sim.values.get(path) for path in SYSTEMCALC}


def saved(state_dir: Path) -> dict:
    return json.loads((state_dir / SELECTION_FILE).read_text())


async def wait_until(predicate, timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), timeout)


# ----- the library ------------------------------------------------------------------------------

async def test_select_saves_the_previous_values_then_selects(connect, bus_address, tmp_path):
    async with localsettings(bus_address) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        lines = await select(client, 100, StateStore(tmp_path, time.time), "command", "test")
        assert sim.values[BATTERY_SERVICE] == "com.victronenergy.battery/100"
        assert sim.values[BMS_INSTANCE] == 100
        record = saved(tmp_path)
        assert record["by"] == "command"
        assert record["settings"][BATTERY_SERVICE] == {
            "previous": "default", "written": "com.victronenergy.battery/100"}
        assert record["settings"][BMS_INSTANCE] == {"previous": -1, "written": 100}
        assert any("BatteryService" in line and "'default'" in line for line in lines)


async def test_nothing_is_written_when_the_previous_values_cannot_be_saved(connect, bus_address,
                                                                           tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    async with localsettings(bus_address) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        with pytest.raises(SelectionError, match="nothing was written"):
            await select(client, 100, StateStore(blocker / "state", time.time), "command", "test")
        assert sim.values == SYSTEMCALC


async def test_restore_gives_back_the_previous_values_and_forgets_them(connect, bus_address,
                                                                       tmp_path):
    async with localsettings(bus_address, {BATTERY_SERVICE: "com.victronenergy.battery/7",
                                           BMS_INSTANCE: 7}) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        await select(client, 100, StateStore(tmp_path, time.time), "command", "test")
        assert sim.values[BMS_INSTANCE] == 100
        await restore(client, StateStore(tmp_path, time.time), "test")
        assert sim.values == {BATTERY_SERVICE: "com.victronenergy.battery/7", BMS_INSTANCE: 7}
        assert not (tmp_path / SELECTION_FILE).exists()
        lines = await restore(client, StateStore(tmp_path, time.time), "again")
        assert lines == ["no saved battery selection: nothing to restore"]


async def test_a_users_choice_made_since_is_left_alone(connect, bus_address, tmp_path):
    async with localsettings(bus_address) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        await select(client, 100, StateStore(tmp_path, time.time), "command", "test")
        sim.set_local(BATTERY_SERVICE, "com.victronenergy.battery/3")  # the GX menu
        lines = await restore(client, StateStore(tmp_path, time.time), "test")
        assert sim.values[BATTERY_SERVICE] == "com.victronenergy.battery/3"
        assert sim.values[BMS_INSTANCE] == -1
        assert any("left /Settings/SystemSetup/BatteryService" in line for line in lines)
        assert not (tmp_path / SELECTION_FILE).exists()


async def test_already_selected_saves_nothing(connect, bus_address, tmp_path):
    async with localsettings(bus_address, {BATTERY_SERVICE: "com.victronenergy.battery/100",
                                           BMS_INSTANCE: 100}) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        lines = await select(client, 100, StateStore(tmp_path, time.time), "config", "test")
        assert "already" in lines[0]
        assert not (tmp_path / SELECTION_FILE).exists()
        assert sim.values[BMS_INSTANCE] == 100


async def test_a_new_device_instance_keeps_the_users_previous_value(connect, bus_address, tmp_path):
    async with localsettings(bus_address) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        await select(client, 100, StateStore(tmp_path, time.time), "config", "first")
        await select(client, 101, StateStore(tmp_path, time.time), "config", "instance bumped")
        assert sim.values[BMS_INSTANCE] == 101
        assert saved(tmp_path)["settings"][BMS_INSTANCE] == {"previous": -1, "written": 101}
        await restore(client, StateStore(tmp_path, time.time), "test")
        assert sim.values == SYSTEMCALC


async def test_without_systemcalcs_settings_nothing_is_written(connect, bus_address, tmp_path):
    async with localsettings(bus_address, {}) as sim:
        client = SettingsClient(await connect(), timeout=2.0)
        with pytest.raises(SelectionError, match="dbus-systemcalc-py"):
            await select(client, 100, StateStore(tmp_path, time.time), "command", "test")
        assert sim.values == {}
        assert not (tmp_path / SELECTION_FILE).exists()


async def test_settings_service_absent_is_a_clear_error(connect, tmp_path):
    client = SettingsClient(await connect(), timeout=1.0)
    with pytest.raises(SettingsUnavailable, match="localsettings"):
        await select(client, 100, StateStore(tmp_path, time.time), "command", "test")


# ----- the daemon's config switch -------------------------------------------------------------

async def test_switch_on_selects_a_restart_keeps_it_switch_off_restores(bus_address, tmp_path):
    on = fast_config(service={"select_as_battery": True})
    async with localsettings(bus_address) as sim:
        async with running(bus_address, tmp_path, sim_packs(280, 280), config=on,
                           with_settings=False) as h:
            instance = (await aggregate_values(h.client))["/DeviceInstance"]
            ours = {BATTERY_SERVICE: f"com.victronenergy.battery/{instance}", BMS_INSTANCE: instance}
            await wait_until(lambda: chosen(sim) == ours)
            assert saved(tmp_path / "state")["by"] == "config"
        assert chosen(sim) == ours  # a plain stop gives nothing back
        async with running(bus_address, tmp_path, sim_packs(280, 280), config=on, with_settings=False):
            await asyncio.sleep(0.3)
            assert chosen(sim) == ours
        off = fast_config(service={"select_as_battery": False})
        async with running(bus_address, tmp_path, sim_packs(280, 280), config=off, with_settings=False):
            await wait_until(lambda: chosen(sim) == SYSTEMCALC)
        assert not (tmp_path / "state" / SELECTION_FILE).exists()


async def test_switch_off_leaves_a_selection_made_by_the_command(bus_address, tmp_path):
    off = fast_config(service={"select_as_battery": False})
    async with localsettings(bus_address) as sim:
        async with running(bus_address, tmp_path, sim_packs(280, 280), config=off,
                           with_settings=False) as h:
            instance = (await aggregate_values(h.client))["/DeviceInstance"]
            await command(bus_address, True, tmp_path / "state",
                          "com.victronenergy.battery.aggregate", "aggbatt")
            assert sim.values[BMS_INSTANCE] == instance
        async with running(bus_address, tmp_path, sim_packs(280, 280), config=off, with_settings=False):
            await asyncio.sleep(0.3)
        assert sim.values[BMS_INSTANCE] == instance
        await command(bus_address, False, tmp_path / "state",
                      "com.victronenergy.battery.aggregate", "aggbatt")
        assert chosen(sim) == SYSTEMCALC


async def test_switch_on_without_settings_service_logs_and_keeps_running(bus_address, tmp_path,
                                                                         caplog):
    caplog.set_level(logging.INFO)
    on = fast_config(service={"select_as_battery": True})
    async with running(bus_address, tmp_path, sim_packs(280, 280), config=on, with_settings=False) as h:
        for _ in range(150):
            if any("battery selection" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        values = await aggregate_values(h.client)
        assert values["/Connected"] == 1
    lines = [r.getMessage() for r in caplog.records if "battery selection" in r.getMessage()]
    assert len(lines) == 1 and "com.victronenergy.settings" in lines[0]


# ----- aggbatt select-battery -----------------------------------------------------------------

def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aggbatt.cli", *args], capture_output=True,
                          text=True, timeout=30)


async def test_command_line_uses_the_claimed_instance_when_the_daemon_is_stopped(bus_address,
                                                                                 tmp_path):
    initial = {**SYSTEMCALC, "/Settings/Devices/aggbatt/ClassAndVrmInstance": "battery:42"}
    async with localsettings(bus_address, initial) as sim:
        state = str(tmp_path / "state")
        done = await asyncio.to_thread(cli, "select-battery", "on", "--bus", bus_address,
                                       "--state-dir", state)
        assert done.returncode == 0, done.stderr
        assert "com.victronenergy.battery/42" in done.stdout
        assert sim.values[BATTERY_SERVICE] == "com.victronenergy.battery/42"
        assert sim.values[BMS_INSTANCE] == 42
        done = await asyncio.to_thread(cli, "select-battery", "off", "--bus", bus_address,
                                       "--state-dir", state)
        assert done.returncode == 0, done.stderr
        assert sim.values[BATTERY_SERVICE] == "default" and sim.values[BMS_INSTANCE] == -1


async def test_command_line_without_any_instance_says_to_start_aggbatt(bus_address, tmp_path):
    async with localsettings(bus_address):
        done = await asyncio.to_thread(cli, "select-battery", "on", "--bus", bus_address,
                                       "--state-dir", str(tmp_path))
        assert done.returncode == 1
        assert "start aggbatt once" in done.stderr
