"""Config reload on SIGHUP, /LogLevel, and how much the daemon logs at the default level."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path

import pytest
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus

from aggbatt.config import config_from_dict, default_config
from aggbatt.core.strategies import build_strategies
from aggbatt.core.strategies.coulomb import CounterInputs
from aggbatt.core.strategies.current_tables import Limit
from aggbatt.core.strategies.own_charge import BALANCING_FILE
from aggbatt.daemon.reload import REBUILDS, plan_reload, rebuild_strategies
from aggbatt.daemon.store import StateStore
from aggbatt.sim.bank import SimBank
from aggbatt.sim.settings import SimSettings
from tests.busclient import get_value, set_value, wait_for_values
from tests.daemonharness import running, sim_packs
from tests.factories import fast_config

AGG = "com.victronenergy.battery.aggregate"


# ----- the plan (pure) --------------------------------------------------------------------------

def test_plan_applies_live_keys_defers_restart_only_ones_and_rebuilds_what_they_feed():
    old = default_config()
    new = config_from_dict({"service": {"tick_interval": 2.0, "product_name": "Shed"},
                            "safety": {"watchdog_timeout": 20.0},
                            "charge": {"own": {"max_charge_current": 120.0}},
                            "freshness": {"stale_after": 5.0}})
    plan = plan_reload(old, new)
    assert {c.key for c in plan.applied} == {"service.product_name",
                                             "charge.own.max_charge_current",
                                             "freshness.stale_after"}
    assert {c.key for c in plan.deferred} == {"service.tick_interval", "safety.watchdog_timeout"}
    assert plan.config.service.tick_interval == 1.0  # kept until the next restart
    assert plan.config.safety.watchdog_timeout == 10.0
    assert plan.config.service.product_name == "Shed"
    assert plan.config.charge.own.max_charge_current == 120.0
    assert plan.rebuild == {"charge"}  # stale_after is read by the engine each tick
    texts = [text for _, text in plan.lines("f.toml")]
    assert "config reload: service.product_name: 'aggbatt virtual battery' -> 'Shed'" in texts
    assert any(t.startswith("config reload: service.tick_interval: 1.0 -> 2.0 takes effect at "
                            "the next restart") for t in texts)


def test_plan_of_an_unchanged_file_changes_nothing():
    plan = plan_reload(default_config(), default_config())
    assert not plan.applied and not plan.deferred and not plan.rebuild
    assert plan.lines("f.toml") == [(logging.INFO, "config reloaded from f.toml: nothing changed")]


@pytest.mark.parametrize(("change", "rebuilt"), [
    ({"soc": {"charge_efficiency": 0.9}}, {"soc"}),
    ({"current": {"stale_after": 3.0}}, {"current"}),
    ({"feedin": {"also_when_blocking": True}}, {"charge"}),
    ({"freshness": {"idle_current": 1.0}}, {"current", "charge"}),
    ({"aggregation": {"temperature": "mean"}}, set()),
    ({"logging": {"level": "debug"}}, set()),
])
def test_each_strategy_is_rebuilt_only_for_its_own_keys(change, rebuilt):
    assert plan_reload(default_config(), config_from_dict(change)).rebuild == rebuilt
    assert set(REBUILDS) == {"current", "soc", "charge"}


def test_a_rebuilt_coulomb_counter_keeps_its_charge(tmp_path):
    old = config_from_dict({"soc": {"strategy": "coulomb_counter"}})
    strategies = build_strategies(old)
    strategies.soc.counter.update(0.0, CounterInputs(current=0.0, capacity=280.0, bms_soc=50.0))
    assert strategies.soc.counter.charge == pytest.approx(140.0)
    new = config_from_dict({"soc": {"strategy": "coulomb_counter", "charge_efficiency": 0.9}})
    rebuilt = rebuild_strategies(strategies, new, {"soc"}, StateStore(tmp_path, lambda: 1.7e9))
    assert rebuilt.soc is not strategies.soc and rebuilt.charge is strategies.charge
    # the BMS now says 80 %: a counter that lost its charge would start from 224 Ah
    rebuilt.soc.counter.update(1.0, CounterInputs(current=0.0, capacity=280.0, bms_soc=80.0))
    assert rebuilt.soc.counter.charge == pytest.approx(140.0)
    assert rebuilt.soc.counter.params.charge_efficiency == 0.9


def test_a_rebuilt_own_charge_keeps_its_balancing_record(tmp_path):
    old = config_from_dict({"charge": {"strategy": "own"}})
    strategies = build_strategies(old)
    strategies.charge.load({"version": 1, "last_balancing": "2024-05-01", "phase": "idle",
                            "phase_since": None, "gave_up_on": None}, None)
    cap = Limit(100.0, "cap")
    strategies.charge.decide(0.0, datetime(2024, 5, 10, 12), [], cap, cap)
    new = config_from_dict({"charge": {"strategy": "own", "own": {"max_charge_current": 90.0}}})
    rebuilt = rebuild_strategies(strategies, new, {"charge"}, StateStore(tmp_path, lambda: 1.7e9))
    assert not (tmp_path / BALANCING_FILE).exists()  # carried in memory, not read from a file
    rebuilt.charge.decide(1.0, datetime(2024, 5, 10, 12), [], cap, cap)
    assert rebuilt.charge.balancing.record.last_balancing == date(2024, 5, 1)
    assert rebuilt.charge.params.tables.max_charge_current == 90.0


# ----- /LogLevel and the amount of logging ---------------------------------------------------

async def test_log_level_is_writeable_at_run_time(bus_address, tmp_path):
    aggbatt_logger = logging.getLogger("aggbatt")
    before = aggbatt_logger.level
    async with running(bus_address, tmp_path, sim_packs(280)) as h:
        assert (await get_value(h.client, AGG, "/LogLevel")).value == "info"
        assert aggbatt_logger.getEffectiveLevel() == logging.INFO
        assert await set_value(h.client, AGG, "/LogLevel", Variant("s", "debug")) == 0
        assert aggbatt_logger.getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("aggbatt.charge").isEnabledFor(logging.DEBUG)
        assert await set_value(h.client, AGG, "/LogLevel", Variant("s", "verbose")) == 2
        assert (await get_value(h.client, AGG, "/LogLevel")).value == "debug"
        assert aggbatt_logger.getEffectiveLevel() == logging.DEBUG
    assert aggbatt_logger.level == before  # the in-process daemon leaves the logger as it was


async def test_steady_bank_at_info_level_does_not_log_per_tick(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    # a generous stale_after: a loaded CI machine must not turn a late sample into a log line
    config = fast_config(service={"tick_interval": 0.1},
                         freshness={"stale_after": 5.0, "stale_after_idle": 5.0})
    async with running(bus_address, tmp_path, sim_packs(280, 280, 280), config=config,
                       bank_current=20.0) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 3)
        counts = []
        for _ in range(2):
            caplog.clear()
            ticks = h.daemon.ticks
            while h.daemon.ticks < ticks + 15:
                await asyncio.sleep(0.05)
            counts.append(len([r for r in caplog.records if r.name.startswith("aggbatt")]))
    # 15 ticks each with every pack value moving: decisions only, never a line per tick
    assert counts == [0, 0], [r.getMessage() for r in caplog.records]


# ----- SIGHUP on the real process -----------------------------------------------------------------

CONFIG = """
[service]
product_name = "{name}"
tick_interval = 0.2

[freshness]
stale_after = 0.5
stale_after_idle = 0.5
readmit_after = 0.3

[logging]
level = "{level}"
"""


class Process:
    """`aggbatt run` as a subprocess; its log lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new.set()

    async def wait_for_line(self, text: str, after: int = 0, timeout: float = 10.0) -> str:
        async def find() -> str:
            while True:
                for line in self.lines[after:]:
                    if text in line:
                        return line
                self._new.clear()
                await self._new.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no line with {text!r}; log:\n" + "\n".join(self.lines)) from None


@asynccontextmanager
async def daemon_process(bus_address: str, config: Path, state: Path) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggbatt.cli", "run", "--bus", bus_address, "--config", str(config),
        "--state-dir", str(state), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process = Process(proc)
    try:
        await process.wait_for_line("published com.victronenergy.battery.aggregate")
        yield process
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        await process._reader


@asynccontextmanager
async def bank_on_bus(bus_address: str, tmp_path: Path) -> AsyncIterator[None]:
    settings = SimSettings(await MessageBus(bus_address=bus_address).connect(),
                           str(tmp_path / "settings.json"))
    await settings.start()
    bank = SimBank(sim_packs(280, 280))
    await bank.start(bus_address)
    bank.step(0.0)
    bank.publish()
    task = asyncio.create_task(bank.run(0.1))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bank.stop()
        await settings.close()
        settings.bus.disconnect()


async def owner(bus: MessageBus) -> str:
    reply = await asyncio.wait_for(bus.call(Message(
        destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetNameOwner", signature="s", body=[AGG])), 5.0)
    assert reply is not None and reply.body, reply
    return reply.body[0]


async def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(
        bus_address, tmp_path, connect):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(name="Bank A", level="info"))
    client = await connect()
    async with bank_on_bus(bus_address, tmp_path), \
            daemon_process(bus_address, config, tmp_path / "state") as daemon:
        await wait_for_values(client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        first_owner = await owner(client)

        # valid: one live key, the log level, and a restart-only key
        config.write_text(CONFIG.format(name="Bank B", level="debug").replace(
            "tick_interval = 0.2", "tick_interval = 0.5"))
        mark = len(daemon.lines)
        daemon.proc.send_signal(signal.SIGHUP)
        await daemon.wait_for_line("change(s) applied now", mark)
        await daemon.wait_for_line("service.product_name: 'Bank A' -> 'Bank B'", mark)
        await daemon.wait_for_line("logging.level: 'info' -> 'debug'", mark)
        await daemon.wait_for_line("service.tick_interval: 0.2 -> 0.5 takes effect at the next "
                                   "restart", mark)
        values = await wait_for_values(client, lambda v: v["/ProductName"] == "Bank B")
        assert values["/LogLevel"] == "debug"
        assert values["/System/NrOfModulesOnline"] == 2
        assert await owner(client) == first_owner  # the same connection: never dropped

        # invalid: every error logged, nothing changes
        config.write_text(CONFIG.format(name="Bank C", level="loud").replace(
            "stale_after = 0.5\n", "stale_after = \"soon\"\n", 1))
        mark = len(daemon.lines)
        daemon.proc.send_signal(signal.SIGHUP)
        await daemon.wait_for_line("keeping the running configuration", mark)
        errors = "\n".join(daemon.lines[mark:])
        assert "freshness.stale_after" in errors and "logging.level" in errors
        await asyncio.sleep(0.5)  # ticks go on (tick_interval 0.2 s) with the old config
        values = await wait_for_values(client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        assert values["/ProductName"] == "Bank B" and values["/LogLevel"] == "debug"
        assert await owner(client) == first_owner

        daemon.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.proc.wait(), 10.0) == 0


# ----- reload inside the running daemon ---------------------------------------------------------

OWN = """
[freshness]
stale_after = 0.5
stale_after_idle = 0.5
readmit_after = 0.3

[charge]
strategy = "own"

[charge.own]
max_charge_current = {ccl}
"""


async def test_reload_feeds_the_new_limits_to_the_engine_and_keeps_packs_online(
        bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    file = tmp_path / "config.toml"
    file.write_text(OWN.format(ccl=200.0))
    config = fast_config(charge={"strategy": "own"})
    async with running(bus_address, tmp_path, sim_packs(280, 280), config=config) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2
                              and (v["/Info/MaxChargeCurrent"] or 0) > 30.0)
        h.daemon.config_path = str(file)
        file.write_text(OWN.format(ccl=30.0))
        caplog.clear()
        h.daemon.reload()
        values = await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] is not None
                                       and v["/Info/MaxChargeCurrent"] <= 30.0)
        assert values["/System/NrOfModulesOnline"] == 2
        messages = [r.getMessage() for r in caplog.records]
        assert "config reload: charge.own.max_charge_current: 200.0 -> 30.0" in messages
        assert not [m for m in messages if "online" in m]  # trackers kept: nobody re-admitted
