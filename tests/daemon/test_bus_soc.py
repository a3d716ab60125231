"""The own Coulomb counter on the bus: /Soc as a consumer reads it, soc.json across restarts and
kill -9.

The bank current comes from a simulated battery-mode SmartShunt alone (current.shunt_alone), so a
test sets it exactly; the simulated packs only provide capacity, cells and their BMS SoC.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.aio import MessageBus

from aggbatt.core.strategies.coulomb import MIN_SOC_SETTING, STATE_VERSION
from aggbatt.daemon import Daemon
from aggbatt.daemon.persist import read_json
from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack_model import PackParams
from aggbatt.sim.victron import SimShunt
from tests.busclient import near, wait_for_values
from tests.daemon.test_bus_current import victron
from tests.daemonharness import Harness, running, sim_pack
from tests.factories import fast_config

COUNTER = {"strategy": "coulomb_counter", "save_interval": 0.2, "save_precision": 0.001}
SHUNT_ALONE = {"source": "victron_devices", "stale_after": 0.3, "shunts": [279], "shunt_alone": True}


def packs(*socs_and_capacities: tuple[float, float]) -> list[PackParams]:
    return [sim_pack(f"P{i}", c, soc=s) for i, (s, c) in enumerate(socs_and_capacities)]


@asynccontextmanager
async def counting(bus_address: str, tmp_path: Path, shunt: SimShunt,
                   bank: list[PackParams]) -> AsyncIterator[Harness]:
    config = fast_config(service={"tick_interval": 0.1}, current=SHUNT_ALONE, soc=COUNTER)
    async with victron(bus_address, shunt):
        async with running(bus_address, tmp_path, bank, config=config) as h:
            yield h


def soc_is(expected: float, tolerance: float = 0.051):
    return near("/Soc", expected, tolerance)


def saved(tmp_path: Path) -> dict[str, Any]:
    read = read_json(tmp_path / "state" / "soc.json", STATE_VERSION)
    assert read.data is not None, read.problem
    return read.data


async def test_counts_the_shunt_current_from_the_bms_start_and_keeps_it_over_a_restart(
        bus_address, tmp_path):
    shunt = SimShunt(device_instance=279, current=0.0)
    # capacity-weighted BMS SoC: (50 % x 3 Ah + 70 % x 1 Ah) / 4 Ah = 55 %
    async with counting(bus_address, tmp_path, shunt, packs((50.0, 3.0), (70.0, 1.0))) as h:
        values = await wait_for_values(h.client, soc_is(55.0))
        assert values["/Capacity"] == pytest.approx(2.2, abs=0.051)
        assert values["/ConsumedAmphours"] == pytest.approx(-1.8, abs=0.051)
        assert saved(tmp_path)["charge_ah"] == pytest.approx(2.2, abs=1e-3)   # saved at once
        shunt.set_current(-72.0)            # 72 A out of 4 Ah: -0.5 % per second
        first = await wait_for_values(h.client, lambda v: v["/Soc"] is not None and v["/Soc"] < 54.9)
        t0 = time.monotonic()
        await asyncio.sleep(1.5)
        second = await wait_for_values(h.client, lambda v: True)
        elapsed = time.monotonic() - t0
        assert second["/Soc"] - first["/Soc"] == pytest.approx(-0.5 * elapsed, abs=0.2)
        shunt.set_current(0.0)
        await asyncio.sleep(0.4)            # past save_interval with the charge still
        counted = (await wait_for_values(h.client, lambda v: True))["/Soc"]
    # closed cleanly: the file holds the last charge
    assert saved(tmp_path)["charge_ah"] / 4.0 * 100 == pytest.approx(counted, abs=0.051)
    # the packs now claim 95 %, but the counted charge is restored, not replaced
    async with counting(bus_address, tmp_path, shunt, packs((95.0, 3.0), (95.0, 1.0))) as h:
        values = await wait_for_values(h.client, lambda v: v["/Soc"] is not None)
        assert values["/Soc"] == pytest.approx(counted, abs=0.051)


@pytest.mark.parametrize("content", ["{", "\x00\x01garbage", '{"version": 1, "charge_ah": 1.0, '
                                     '"saved_at": "2999-01-01T00:00:00+00:00"}'])
async def test_a_bad_state_file_starts_from_the_bms_soc_never_zero(bus_address, tmp_path, content):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "soc.json").write_text(content, encoding="latin-1")
    shunt = SimShunt(device_instance=279, current=0.0)
    async with counting(bus_address, tmp_path, shunt, packs((40.0, 2.0), (80.0, 2.0))) as h:
        await wait_for_values(h.client, soc_is(60.0))
        assert saved(tmp_path)["charge_ah"] == pytest.approx(2.4, abs=1e-3)   # replaced at once


async def test_time_to_go_counts_down_to_the_ess_minimum_soc(bus_address, tmp_path):
    shunt = SimShunt(device_instance=279, current=-36.0)
    async with counting(bus_address, tmp_path, shunt, packs((50.0, 100.0), (50.0, 100.0))) as h:
        # 36 A out of about 100 Ah: 3600 x Q / 36 = 100 s per Ah (Q published to 0.1 Ah)
        values = await wait_for_values(h.client, lambda v: v["/TimeToGo"] is not None)
        assert values["/TimeToGo"] == pytest.approx(100 * values["/Capacity"], abs=10)
        assert h.settings is not None
        h.settings.set_local(MIN_SOC_SETTING, 20.0)          # ESS keeps 20 % of 200 Ah = 40 Ah
        values = await wait_for_values(h.client, lambda v: v["/TimeToGo"] is not None
                                       and v["/TimeToGo"] < 100 * (v["/Capacity"] - 20))
        assert values["/TimeToGo"] == pytest.approx(100 * (values["/Capacity"] - 40.0), abs=10)
        shunt.set_current(5.0)                               # charging: no time to go
        await wait_for_values(h.client, lambda v: v["/TimeToGo"] is None)


async def test_waits_for_a_pack_instead_of_publishing_zero(bus_address, tmp_path):
    """No pack online at start and no state file: /Soc stays invalid, then the BMS SoC."""
    shunt = SimShunt(device_instance=279, current=0.0)
    config = fast_config(service={"tick_interval": 0.1}, current=SHUNT_ALONE, soc=COUNTER)
    async with victron(bus_address, shunt), daemon_only(bus_address, tmp_path, config) as client:
        await asyncio.sleep(0.3)
        values = await wait_for_values(client, lambda v: True)
        assert values["/Soc"] is None and values["/Capacity"] is None
        assert not (tmp_path / "state" / "soc.json").exists()
        async with running_bank(bus_address, packs((30.0, 10.0))):
            await wait_for_values(client, soc_is(30.0))
    assert saved(tmp_path)["charge_ah"] == pytest.approx(3.0, abs=1e-3)


async def test_a_wall_clock_step_neither_creates_nor_destroys_charge(bus_address, tmp_path):
    """The daemon's wall clock jumps +1 day and then -1 day while 72 A flow out of 4 Ah."""
    wall = [time.time()]
    shunt = SimShunt(device_instance=279, current=-72.0)
    config = fast_config(service={"tick_interval": 0.1}, current=SHUNT_ALONE, soc=COUNTER)
    async with victron(bus_address, shunt), running_bank(bus_address, packs((80.0, 4.0))):
        async with daemon_only(bus_address, tmp_path, config, wall_clock=lambda: wall[0]) as client:
            previous = await wait_for_values(client, lambda v: v["/Soc"] is not None)
            t_previous = time.monotonic()
            for step in (86400.0, -86400.0):
                wall[0] += step
                await asyncio.sleep(1.0)
                values = await wait_for_values(client, lambda v: True)
                now = time.monotonic()
                # -0.5 % per second of monotonic time, whatever the wall clock did
                assert values["/Soc"] - previous["/Soc"] == pytest.approx(
                    -0.5 * (now - t_previous), abs=0.2)
                previous, t_previous = values, now
    assert saved(tmp_path)["charge_ah"] / 4.0 * 100 == pytest.approx(previous["/Soc"], abs=0.2)


@asynccontextmanager
async def running_bank(bus_address: str, bank_packs: list[PackParams]) -> AsyncIterator[SimBank]:
    bank = SimBank(bank_packs, name_prefix="w")
    await bank.start(bus_address)
    bank.publish()
    task = asyncio.create_task(bank.run(0.1))
    try:
        yield bank
    finally:
        await bank.stop()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def daemon_only(bus_address: str, tmp_path: Path, config: Any,
                      wall_clock: Callable[[], float] = time.time) -> AsyncIterator[MessageBus]:
    """The daemon alone (packs, if any, are the caller's); yields a client connection."""
    daemon = Daemon(config, bus_address, tmp_path / "state", wall_clock=wall_clock)
    await daemon.start()
    loop_task = asyncio.create_task(daemon.run_forever())
    client = await MessageBus(bus_address=bus_address).connect()
    try:
        yield client
    finally:
        client.disconnect()
        daemon.stop()
        await asyncio.gather(loop_task, return_exceptions=True)
        await daemon.close()


# ----- kill -9 at random moments ---------------------------------------------------------------

CONFIG_TOML = """
[service]
tick_interval = 0.1
[freshness]
stale_after = 0.5
stale_after_idle = 0.5
readmit_after = 0.3
[current]
source = "victron_devices"
stale_after = 0.3
shunts = [279]
shunt_alone = true
[soc]
strategy = "coulomb_counter"
save_interval = 0.1
save_precision = 0.0002
"""
DRIFT, SWING = -20.0, 50.0  # A: the shunt current swings between -70 and +30 A
CAPACITY = 20.0            # Ah, two packs of 10 Ah


async def test_persistence_survives_kill_9_at_any_moment(bus_address, tmp_path):
    """Start `aggbatt run`, kill -9 it at a random moment, repeat: the file always loads and the
    charge never moves faster than the current allows, also when the packs' BMS SoC is far off."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG_TOML)
    state = tmp_path / "state"
    bank = SimBank(packs((50.0, 10.0), (50.0, 10.0)), name_prefix="k")
    shunt = SimShunt(device_instance=279, current=0.0)
    await bank.start(bus_address)
    bank.publish()
    bank_task = asyncio.create_task(bank.run(0.1))

    async def swing() -> None:
        start = time.monotonic()
        while True:
            shunt.set_current(DRIFT + SWING * math.sin((time.monotonic() - start) * 2.0))
            await asyncio.sleep(0.05)

    swing_task = asyncio.create_task(swing())
    rng = random.Random(9)
    records: list[tuple[float, float]] = []
    logs: list[str] = []
    try:
        async with victron(bus_address, shunt):
            for run in range(6):
                child = subprocess.Popen(
                    [sys.executable, "-m", "aggbatt.cli", "run", "--bus", bus_address,
                     "--state-dir", str(state), "--config", str(config)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                await asyncio.sleep(rng.uniform(0.3, 2.0) if run else 2.0)
                os.kill(child.pid, signal.SIGKILL)
                out, _ = await asyncio.to_thread(child.communicate, timeout=10)
                logs.append(out.decode(errors="replace"))
                if not (state / "soc.json").exists():
                    continue
                read = read_json(state / "soc.json", STATE_VERSION)
                assert read.data is not None, f"run {run}: {read.problem}"
                records.append((time.monotonic(), read.data["charge_ah"]))
                if run == 0:
                    for pack in bank.packs:             # a re-initialisation would now jump to 95 %
                        pack.set_override("/Soc", 95.0)
    finally:
        swing_task.cancel()
        await bank.stop()
        bank_task.cancel()
        await asyncio.gather(swing_task, bank_task, return_exceptions=True)
    assert len(records) >= 5, logs
    assert len({round(c, 4) for _, c in records}) >= 3, records        # it really counted
    for (t0, c0), (t1, c1) in pairwise(records):
        assert abs(c1 - c0) <= (SWING - DRIFT) * (t1 - t0) / 3600 + 0.01, (records, logs)
    assert all(0 < c < 0.9 * CAPACITY for _, c in records), records
    assert "initialised from the BMS SoC" in logs[0]
    assert not any("initialised from the BMS SoC" in text for text in logs[1:]), logs
    assert json.loads((state / "soc.json").read_text())["version"] == 1
