"""Pack identity on the bus: a service stays one pack when its name or serial changes."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from dbus_fast import Variant

from aggbatt.sim.pack import PackParams
from tests.busclient import aggregate_values, set_value, wait_for_values
from tests.daemonharness import fast_config, running


def pack(serial: str, name: str | None = None) -> PackParams:
    return PackParams(capacity_ah=280, serial=serial, custom_name=name, noise_a=0.05, noise_mv=1.0)


def known(tmp_path: Path) -> list[str] | None:
    try:
        return json.loads((tmp_path / "state" / "packs.json").read_text())["known"]
    except (OSError, ValueError, KeyError):
        return None


async def wait_for_known(tmp_path: Path, expected: list[str], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while known(tmp_path) != expected:
        assert loop.time() < deadline, f"known packs {known(tmp_path)}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_renaming_a_pack_without_serial_leaves_no_ghost(bus_address, tmp_path):
    config = fast_config(freshness={"on_pack_lost": "block_charge"})
    async with running(bus_address, tmp_path, [pack("", "Left"), pack("P1")], config=config) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        left = h.bank.packs[0].service_name
        # what the GUI does when the user renames the pack
        assert await set_value(h.client, left, "/CustomName", Variant("s", "Right")) == 0
        await wait_for_known(tmp_path, ["P1", "Right"])
        values = await aggregate_values(h.client)
        assert values["/System/NrOfModulesOffline"] == 0
        assert values["/Alarms/BmsCable"] == 0
        assert values["/Info/MaxChargeCurrent"] > 0
    async with running(bus_address, tmp_path, [pack("", "Right"), pack("P1")], config=config) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        assert values["/System/NrOfModulesOffline"] == 0
        assert values["/Info/MaxChargeCurrent"] > 0


async def test_a_serial_that_changes_on_every_read_stays_one_pack(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggbatt")
    config = fast_config(service={"tick_interval": 0.2})
    async with running(bus_address, tmp_path, [pack("P0"), pack("P1")], config=config) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        await wait_for_known(tmp_path, ["P0", "P1"])
        written = (tmp_path / "state" / "packs.json").stat().st_mtime_ns
        flapping = h.bank.packs[0]
        for n in range(20):         # a new serial on every publish, several ticks in between
            flapping.params.serial = f"F{n}"
            await asyncio.sleep(0.1)
            if n % 5 == 4:
                values = await aggregate_values(h.client)
                assert values["/System/NrOfModulesOnline"] == 2
                assert values["/System/NrOfModulesOffline"] == 0
                assert values["/Alarms/BmsCable"] == 0
        assert known(tmp_path) == ["P0", "P1"]
        assert (tmp_path / "state" / "packs.json").stat().st_mtime_ns == written
    told = [r for r in caplog.records if "reports another id" in r.getMessage()]
    assert len(told) == 1
