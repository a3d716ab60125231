"""The feed-in guard on a private bus: the real daemon (a subprocess) against the simulated
settings service and simulated packs, including kill -9, SIGTERM, a user's change and a settings
service that is gone when the guard wants to write."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message

from aggbatt.core.strategies.feedin import FEEDIN_PATH
from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack_model import pack_params
from aggbatt.sim.settings import SimSettings

pytestmark = pytest.mark.bus

# 16 LFP cells at 95 % SoC rest at 3.35 V; one cell raised by 150 mV is 3.50 V, over 3.45 V.
CONFIG = """
[service]
tick_interval = 0.2
[charge]
strategy = "own"
[charge.own]
charge_cell_voltage = [3.36, 3.36, 3.36, 3.36, 3.36, 3.36, 3.36, 3.36, 3.36, 3.36, 3.36, 3.36]
balancing_cell_voltage = 3.36
max_cell_voltage = 3.45
cvl_hold_time = 0.0
cvl_recovery_rate = 0.1
[feedin]
guard = true
"""
RAISE_MV = 150.0
WAIT = 15.0


class DaemonProcess:
    """`aggbatt run` as a subprocess, its log in a file."""

    def __init__(self, address: str, config: Path, state_dir: Path, log: Path) -> None:
        self.args = [sys.executable, "-c", "import sys; from aggbatt.cli import main; sys.exit(main())",
                     "run", "--bus", address, "--config", str(config), "--state-dir", str(state_dir)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    async def stop(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(asyncio.to_thread(self.proc.wait), WAIT)
        self.proc = None
        return code

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class World:
    def __init__(self, address: str, tmp: Path, connect: Callable[[], Any]) -> None:
        self.address = address
        self.tmp = tmp
        self.connect = connect
        self.state_dir = tmp / "state"
        self.settings_file = str(tmp / "settings.json")
        self.settings: SimSettings | None = None
        self.bank = SimBank(pack_params(2, socs=[95.0, 95.0]))
        config = tmp / "own.toml"
        config.write_text(CONFIG)
        self.daemon = DaemonProcess(address, config, self.state_dir, tmp / "daemon.log")
        self.runner: asyncio.Task[None] | None = None

    async def start_settings(self, initial: dict[str, Any]) -> None:
        self.settings = SimSettings(await self.connect(), state_file=self.settings_file, initial=initial)
        await self.settings.start()

    async def stop_settings(self) -> None:
        assert self.settings is not None
        await self.settings.close()
        self.settings = None

    def feedin(self) -> Any:
        return None if self.settings is None else self.settings.values.get(FEEDIN_PATH)

    def state(self) -> dict[str, Any] | None:
        path = self.state_dir / "feedin.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    async def status(self) -> dict[str, Any]:
        bus = await self.connect()
        reply = await asyncio.wait_for(bus.call(Message(
            destination="com.victronenergy.battery.aggregate", path="/",
            interface="io.github.aggbatt.Status", member="GetStatus")), WAIT)
        assert reply is not None and reply.signature == "s", reply
        return json.loads(reply.body[0])

    def over_voltage(self, on: bool) -> None:
        self.bank.pack(1).drift_cell(1, RAISE_MV if on else 0.0)

    async def until(self, check: Callable[[], bool], what: str) -> None:
        async def poll() -> None:
            while not check():
                await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(poll(), WAIT)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; daemon log:\n{self.daemon.text()}") from None


@pytest.fixture
async def world(bus_address: str, tmp_path: Path, connect) -> AsyncIterator[World]:
    w = World(bus_address, tmp_path, connect)
    await w.start_settings({FEEDIN_PATH: 1})
    await w.bank.start(bus_address)
    w.runner = asyncio.get_running_loop().create_task(w.bank.run(interval=0.2))
    try:
        yield w
    finally:
        if w.daemon.proc is not None:
            await w.daemon.stop(signal.SIGKILL)
        await w.bank.stop()
        if w.runner is not None:
            await asyncio.wait_for(w.runner, 5.0)
        if w.settings is not None:
            await w.settings.close()


async def test_guard_writes_and_restores_across_kill_9(world: World):
    world.daemon.start()
    world.over_voltage(True)
    await world.until(lambda: world.feedin() == 0, "the guard to turn feed-in off")
    await world.until(lambda: (world.state() or {}).get("written") is True, "the 0 to be recorded")
    assert world.state() == {"version": 1, "saved_value": 1, "holding": True, "written": True,
                             "yielded": False}
    await world.daemon.stop(signal.SIGKILL)
    assert world.feedin() == 0  # nobody restored it: the process died

    world.over_voltage(False)
    world.daemon.start()
    await world.until(lambda: world.feedin() == 1, "the restarted daemon to restore feed-in")
    await world.until(lambda: (world.state() or {}).get("holding") is False, "the record to clear")
    log = world.daemon.text()
    assert f"{FEEDIN_PATH} := 0" in log and f"{FEEDIN_PATH} := 1" in log
    assert log.count(f"{FEEDIN_PATH} := 1") == 1  # restored exactly once


async def test_sigterm_restores_and_a_restart_engages_again(world: World):
    world.daemon.start()
    world.over_voltage(True)
    await world.until(lambda: world.feedin() == 0, "feed-in off")
    assert await world.daemon.stop(signal.SIGTERM) == 0
    assert world.feedin() == 1
    assert (world.state() or {}).get("holding") is False
    world.daemon.start()
    await world.until(lambda: world.feedin() == 0, "feed-in off again after the restart")
    world.over_voltage(False)
    await world.until(lambda: world.feedin() == 1, "feed-in restored")


async def test_the_users_change_wins_for_the_episode(world: World):
    world.daemon.start()
    world.over_voltage(True)
    await world.until(lambda: world.feedin() == 0, "feed-in off")
    assert world.settings is not None
    world.settings.set_local(FEEDIN_PATH, 1)
    await world.until(lambda: (world.state() or {}).get("yielded") is True, "the guard to yield")
    assert world.feedin() == 1
    own = (await world.status())["own_charge"]
    assert (own["feedin_guard"], own["feedin_setting"]) == ("hands off", 1)
    world.over_voltage(False)
    await world.until(lambda: (world.state() or {}).get("yielded") is False, "the episode to end")
    assert world.feedin() == 1
    assert world.daemon.text().count(f"{FEEDIN_PATH} := ") == 1  # only the first 0


async def test_settings_service_gone_when_the_guard_restores(world: World):
    world.daemon.start()
    world.over_voltage(True)
    await world.until(lambda: world.feedin() == 0, "feed-in off")
    await world.stop_settings()
    world.over_voltage(False)
    await world.until(lambda: "could not write" in world.daemon.text(), "a logged failed write")
    assert world.daemon.proc is not None and world.daemon.proc.poll() is None  # still running
    await world.start_settings({})  # localsettings is back with its saved values (feed-in 0)
    assert world.feedin() == 0
    await world.until(lambda: world.feedin() == 1, "the retried restore")
    assert await world.daemon.stop(signal.SIGTERM) == 0
