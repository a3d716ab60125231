"""One measured run of the benchmark (runner.py runs one per bank and build).

Theory of operation. One run is one bank with one build of dbus-fast, on a fresh private
dbus-daemon; no measured process shares a process with the packs or with the runner:

1. The simulated bank (and a simulated settings service) starts in its own process, simproc.py.
2. An Observer (probes.py) in this process watches the aggregate's name and its ItemsChanged.
3. `aggbatt run` starts, through floors.py (which counts messages), on the bench config;
   "start" = from the spawn to the first GetItems or ItemsChanged showing valid CVL/CCL/DCL,
   voltage and SoC with every pack online.
4. Once the daemon's match rules have stopped changing they are copied from the bus (Debug.Stats
   GetAllMatchRules) into floor_needed; floor_all, floor_velib (velib_floor.py, under the
   system's Python with dbus-python and GLib, when it has them) and the import floor start too.
5. Warm-up, then the window: CPU and message counters are read at both ends of it and RSS is
   sampled every `sample_every` seconds.
5a. GetItems: `get_items_calls` GetItems on the aggregate, one after another; the daemon's CPU
   over them, less what it would have used anyway at the window's rate, per call.
6. Reaction: `reactions` times, at a random moment, a pack blocks charging (CCL 0, published at
   once); the time until the Observer sees the aggregate's CCL 0 is recorded; the pack unblocks
   and the aggregate's CCL must come back before the next event.
7. Stale: `stale_events` times a pack freezes; the time from its last publish until the
   aggregate's NrOfModulesOffline rises is recorded; it thaws and is re-admitted before the next.
8. Everything stops; the private bus goes with its temp dir.

The bank carries a charging current (`current_per_pack`), so a frozen pack still reports current of
its own and the daemon's `stale_after` proves it frozen (a quiet pack at rest is never stale).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType

from aggbatt.bench import report
from aggbatt.bench.options import Bank, Build, Options
from aggbatt.bench.probes import Meter, Observer, Predicate, connections_of, match_rules
from aggbatt.bench.processes import Measured, Sim, spawn, wait_ready
from aggbatt.daemon.status_api import STATUS_INTERFACE
from aggbatt.sim.privatebus import start_private_bus

AGGREGATE = "com.victronenergy.battery.aggregate"
CCL = "/Info/MaxChargeCurrent"
OFFLINE = "/System/NrOfModulesOffline"
ONLINE = "/System/NrOfModulesOnline"
VALID_PATHS = ("/Info/MaxChargeVoltage", CCL, "/Info/MaxDischargeCurrent", "/Dc/0/Voltage", "/Soc")
START_TIMEOUT = 60.0
VELIB_FLOOR = Path(__file__).with_name("velib_floor.py")


def _config(workdir: Path, opts: Options) -> Path:
    path = workdir / "bench.toml"
    path.write_text(
        "[freshness]\n"
        f"stale_after = {opts.stale_after}\n"
        f"readmit_after = {opts.readmit_after}\n",
        encoding="utf-8")
    return path


def _valid(values: Mapping[str, Any], packs: int) -> bool:
    return all(values.get(p) is not None for p in VALID_PATHS) and values.get(ONLINE) == packs


async def _first_valid(observer: Observer, valid: asyncio.Future[float], daemon: Measured) -> float:
    """When the aggregate first showed valid values; fails at once if the daemon exits."""

    async def watch() -> float:
        await observer.wait_appeared(START_TIMEOUT)
        await observer.read_all()
        return await asyncio.wait_for(valid, START_TIMEOUT)

    watcher = asyncio.ensure_future(watch())
    exited = asyncio.ensure_future(daemon.proc.wait())
    done, _ = await asyncio.wait({watcher, exited}, return_when=asyncio.FIRST_COMPLETED)
    if watcher not in done:
        watcher.cancel()
        raise RuntimeError(f"the daemon exited with code {daemon.proc.returncode}")
    exited.cancel()
    return watcher.result()


async def _daemon_ticks(observer: Observer) -> int | None:
    """The daemon's tick count from its status call, None when it has none."""
    try:
        reply = await asyncio.wait_for(observer.bus.call(Message(
            destination=AGGREGATE, path="/", interface=STATUS_INTERFACE, member="GetStatus")), 5.0)
    except asyncio.TimeoutError:
        return None
    if reply is None or reply.message_type is MessageType.ERROR:
        return None
    ticks = json.loads(reply.body[0]).get("ticks")
    return ticks if isinstance(ticks, int) else None


async def _stable_rules(observer: Observer, connections: list[str]) -> list[str] | None:
    """The daemon's match rules once they held still for a second (the monitor's plan is in)."""
    last, still, deadline = None, 0, time.monotonic() + 30.0
    while time.monotonic() < deadline:
        rules = await match_rules(observer.bus, connections)
        if rules is None:
            return None
        still = still + 1 if rules == last else 0
        if still >= 4:
            return rules
        last = rules
        await asyncio.sleep(0.25)
    return last


# ----- measurements ----------------------------------------------------------------------------

async def _ccl0_reactions(sim: Sim, observer: Observer, opts: Options, rng: random.Random
                          ) -> tuple[list[float], int]:
    times: list[float] = []
    missed = 0
    packs = len(sim.services)
    for event in range(opts.reactions):
        pack = event % packs + 1
        await asyncio.sleep(rng.uniform(0.05, 0.45))
        seen = observer.expect(lambda v: v.get(CCL) == 0)
        sent = await sim.command(f"block {pack}")
        try:
            times.append((await asyncio.wait_for(seen, 5.0) - sent) * 1000.0)
        except asyncio.TimeoutError:
            missed += 1
        back = observer.expect(lambda v: (v.get(CCL) or 0) > 0)
        await asyncio.sleep(rng.uniform(0.05, 0.45))
        await sim.command(f"unblock {pack}")
        await asyncio.wait_for(back, 10.0)
    return times, missed


def _offline_above(count: int) -> Predicate:
    return lambda values: (values.get(OFFLINE) or 0) > count


def _offline_at_most(count: int) -> Predicate:
    return lambda values: (values.get(OFFLINE) or 0) <= count


async def _stale_reactions(sim: Sim, observer: Observer, opts: Options) -> tuple[list[float], int]:
    times: list[float] = []
    missed = 0
    packs = len(sim.services)
    for event in range(opts.stale_events):
        pack = event % packs + 1
        before = observer.values.get(OFFLINE) or 0
        seen = observer.expect(_offline_above(before))
        last_publish = await sim.command(f"freeze {pack}")
        try:
            times.append(await asyncio.wait_for(seen, opts.stale_after + 10.0) - last_publish)
        except asyncio.TimeoutError:
            missed += 1
        back = observer.expect(_offline_at_most(before))
        await sim.command(f"thaw {pack}")
        await asyncio.wait_for(back, opts.stale_after + opts.readmit_after + 15.0)
        await asyncio.sleep(opts.interval)
    return times, missed


def _process_result(meter: Meter, first: dict[str, Any] | None, last: dict[str, Any] | None,
                    wall: float) -> dict[str, Any]:
    cpu, source = meter.cpu_used()
    ticks = meter.ticks_used()
    mean = meter.rss_mean_kb()
    main_thread = meter.main_thread_used()
    wakeups = meter.wakeups_seen()
    result: dict[str, Any] = {
        "pid": meter.pid,
        "cpu_s": cpu,
        "cpu_s_per_s": None if cpu is None else cpu / wall,
        "cpu_source": source,
        "cpu_ticks_s_per_s": None if ticks is None else ticks / wall,
        "main_thread_cpu_s_per_s": None if main_thread is None else main_thread / wall,
        "wakeups_per_s": None if wakeups is None else wakeups / wall,
        "rss_peak_mb": None if meter.peak_kb is None else meter.peak_kb / 1024.0,
        "rss_mean_mb": None if mean is None else mean / 1024.0,
    }
    if first is not None and last is not None:
        for key in ("received", "sent"):
            result[key] = last[key] - first[key]
            result[f"{key}_per_s"] = result[key] / wall
        result["dbus_fast_compiled"] = last["dbus_fast_compiled"]
        result["gc_collections"] = [b - a for a, b in zip(first["gc"]["collections"],
                                                          last["gc"]["collections"], strict=True)]
        result["gc_s_per_s"] = sum(last["gc"]["seconds"]) / wall - sum(first["gc"]["seconds"]) / wall
    return result


@dataclass
class _Window:
    """What the measured window recorded."""

    wall: float
    first: dict[str, dict[str, Any]]
    last: dict[str, dict[str, Any]]
    context: dict[str, Meter]
    ticks_per_s: float | None


class BankRun:
    """One bank with one build on its own private bus (module docstring, steps 1-8)."""

    def __init__(self, bank: Bank, build: Build, opts: Options, workdir: Path, address: str) -> None:
        self.bank, self.build, self.opts, self.workdir, self.address = bank, build, opts, workdir, address
        self.measured: list[Measured] = []
        self.rule_counts: dict[str, int | None] = {}
        self.rules: list[str] | None = None
        self.connections: list[str] = []
        self.profile: Path | None = None
        if opts.profile_dir is not None:
            opts.profile_dir.mkdir(parents=True, exist_ok=True)
            self.profile = opts.profile_dir / f"daemon-{bank.label}-{build.name}.pstats"

    async def start_daemon(self, observer: Observer) -> float:
        """Spawn `aggbatt run`; seconds until the aggregate first showed valid values."""
        valid = observer.expect(lambda v: _valid(v, self.bank.packs))
        log = self.workdir / "daemon.log"
        spawned = time.monotonic()
        daemon = await spawn(
            "daemon", "daemon", self.build, self.workdir,
            [] if self.profile is None else ["--profile", str(self.profile)],
            ["--", "run", "--bus", self.address, "--state-dir", str(self.workdir / "state"),
             "--config", str(_config(self.workdir, self.opts))],
            log=log)
        self.measured.append(daemon)
        try:
            return await _first_valid(observer, valid, daemon) - spawned
        except (asyncio.TimeoutError, RuntimeError) as exc:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"no valid aggregate ({exc!r}); daemon log:\n{tail}") from None

    async def start_floors(self, observer: Observer) -> None:
        daemon = self.measured[0]
        self.connections = await connections_of(observer.bus, daemon.proc.pid)
        self.rules = await _stable_rules(observer, self.connections)
        floors = []
        if self.rules is not None:
            rules_file = self.workdir / "rules.json"
            rules_file.write_text(json.dumps(self.rules), encoding="utf-8")
            floors.append(await spawn("needed", "floor_needed", self.build, self.workdir,
                                       ["--bus", self.address, "--rules", str(rules_file)]))
        floors.append(await spawn("all", "floor_all", self.build, self.workdir,
                                   ["--bus", self.address, "--ignore", AGGREGATE]))
        if self.opts.velib_python is not None:
            floors.append(await spawn(
                "velib", "floor_velib", self.build, self.workdir,
                ["--bus", self.address, "--ignore", AGGREGATE],
                program=[self.opts.velib_python, str(VELIB_FLOOR)]))
        floors.append(await spawn("imports", "import_floor", self.build, self.workdir, []))
        self.measured += floors
        await asyncio.gather(*(wait_ready(f) for f in floors))
        for m in self.measured:
            held = await match_rules(observer.bus, await connections_of(observer.bus, m.proc.pid))
            self.rule_counts[m.role] = None if held is None else len(held)

    async def window(self, observer: Observer, context: dict[str, Meter]) -> _Window:
        measured = self.measured
        ticks_before = await _daemon_ticks(observer)
        first = dict(zip((m.role for m in measured),
                         await asyncio.gather(*(m.counts() for m in measured)), strict=True))
        meters = [m.meter for m in measured] + list(context.values())
        started = time.monotonic()
        for meter in meters:
            meter.begin()
        while (left := self.opts.duration - (time.monotonic() - started)) > 0:
            await asyncio.sleep(min(self.opts.sample_every, left))
            for meter in meters:
                meter.sample()
        for meter in meters:
            meter.end()
        wall = time.monotonic() - started
        last = dict(zip((m.role for m in measured),
                        await asyncio.gather(*(m.counts() for m in measured)), strict=True))
        ticks_after = await _daemon_ticks(observer)
        ticks = None if ticks_before is None or ticks_after is None else ticks_after - ticks_before
        return _Window(wall, first, last, context, None if ticks is None else ticks / wall)

    async def get_items_cost(self, observer: Observer, window: _Window) -> dict[str, Any]:
        """The daemon's CPU per GetItems on the aggregate (module docstring, step 5a)."""
        daemon = self.measured[0]
        cpu, _ = daemon.meter.cpu_used()
        idle_rate = None if cpu is None else cpu / window.wall
        calls = self.opts.get_items_calls
        meter = Meter(daemon.proc.pid)
        started = time.monotonic()
        meter.begin()
        for _ in range(calls):
            reply = await asyncio.wait_for(observer.bus.call(Message(
                destination=AGGREGATE, path="/", interface="com.victronenergy.BusItem",
                member="GetItems")), 5.0)
            if reply is None or reply.message_type is MessageType.ERROR:
                raise RuntimeError(f"GetItems on the aggregate failed: {reply and reply.body}")
        meter.end()
        wall = time.monotonic() - started
        used, _ = meter.cpu_used()
        per_call = (None if used is None or idle_rate is None or not calls
                    else max(0.0, used - idle_rate * wall) / calls * 1000.0)
        return {"calls": calls, "paths": len(reply.body[0]), "daemon_cpu_ms_per_call": per_call,
                "round_trip_ms": wall / calls * 1000.0 if calls else None}

    async def stop(self) -> None:
        for m in self.measured:
            await m.stop()

    def result(self, first_valid: float, window: _Window, ccl: dict[str, Any],
               stale: dict[str, Any], get_items: dict[str, Any]) -> dict[str, Any]:
        wall = window.wall
        procs = {m.role: {**_process_result(m.meter, window.first.get(m.role),
                                            window.last.get(m.role), wall),
                          "match_rules": self.rule_counts.get(m.role)}
                 for m in self.measured}
        procs.update({name: _process_result(meter, None, None, wall)
                      for name, meter in window.context.items()})
        procs["daemon"]["connections"] = len(self.connections)
        procs["daemon"]["ticks_per_s"] = window.ticks_per_s
        for proc in procs.values():
            if proc.get("received_per_s") is not None:
                proc["received_per_pack_per_s"] = proc["received_per_s"] / self.bank.packs
        beyond = sorted(m for m in set(window.last["daemon"]["modules"])
                        - set(window.last["import_floor"]["modules"])
                        if not m.startswith("aggbatt.bench"))
        daemon_rss, import_rss = procs["daemon"]["rss_peak_mb"], procs["import_floor"]["rss_peak_mb"]
        run: dict[str, Any] = {
            "bank": self.bank.label,
            "packs": self.bank.packs,
            "cells": self.bank.cells,
            "build": self.build.name,
            "python": self.build.python,
            "window_s": wall,
            "first_valid_s": first_valid,
            "floor_needed_method": ("copy of the daemon's match rules (Debug.Stats GetAllMatchRules)"
                                    if self.rules is not None else
                                    "not measured: this dbus-daemon has no Debug.Stats interface"),
            "processes": procs,
            "modules_beyond_import_floor": beyond,
            "ratios": {
                "cpu_daemon_over_floor_needed": report.ratio(
                    procs["daemon"]["cpu_s_per_s"], procs.get("floor_needed", {}).get("cpu_s_per_s")),
                "cpu_daemon_over_floor_all": report.ratio(
                    procs["daemon"]["cpu_s_per_s"], procs["floor_all"]["cpu_s_per_s"]),
                "cpu_daemon_over_floor_velib": report.ratio(
                    procs["daemon"]["cpu_s_per_s"], procs.get("floor_velib", {}).get("cpu_s_per_s")),
                "rss_daemon_minus_import_floor_mb": (
                    None if daemon_rss is None or import_rss is None else daemon_rss - import_rss),
            },
            "reaction": {"ccl0_ms": ccl, "stale_s": {**stale, "stale_after": self.opts.stale_after}},
            "get_items": get_items,
            "profile": None if self.profile is None else str(self.profile),
        }
        run["targets"] = report.targets(run)
        return run


async def run_one(bank: Bank, build: Build, opts: Options, workdir: Path) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    with start_private_bus() as pbus:
        sim = await Sim.start(pbus.address, bank, opts)
        run = BankRun(bank, build, opts, workdir, pbus.address)
        observer: Observer | None = None
        try:
            observer = await Observer.connect(pbus.address, AGGREGATE)
            first_valid = await run.start_daemon(observer)
            await run.start_floors(observer)
            await asyncio.sleep(opts.warmup)
            window = await run.window(
                observer, {"sim": Meter(sim.proc.pid), "bus": Meter(pbus.process.pid)})
            get_items = await run.get_items_cost(observer, window)
            ccl = report.summary(*await _ccl0_reactions(sim, observer, opts, rng))
            stale = report.summary(*await _stale_reactions(sim, observer, opts))
        finally:
            await run.stop()
            if observer is not None:
                observer.close()
            await sim.stop()
    return run.result(first_valid, window, ccl, stale, get_items)
