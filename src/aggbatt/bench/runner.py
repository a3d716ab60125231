"""Run the benchmark: `python -m aggbatt.bench [options]` (scripts/bench sets up both builds).

Theory of operation. One run is one bank with one build of dbus-fast, on a fresh private
dbus-daemon; no measured process shares a process with the packs or with this runner:

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

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType

from aggbatt.bench import report
from aggbatt.bench.probes import Meter, Observer, connections_of, match_rules
from aggbatt.daemon.status_api import STATUS_INTERFACE
from aggbatt.sim.privatebus import start_private_bus

AGGREGATE = "com.victronenergy.battery.aggregate"
CCL = "/Info/MaxChargeCurrent"
OFFLINE = "/System/NrOfModulesOffline"
ONLINE = "/System/NrOfModulesOnline"
VALID_PATHS = ("/Info/MaxChargeVoltage", CCL, "/Info/MaxDischargeCurrent", "/Dc/0/Voltage", "/Soc")
START_TIMEOUT = 60.0
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Bank:
    packs: int
    cells: int

    @property
    def label(self) -> str:
        return f"{self.packs}x{self.cells}"

    @classmethod
    def parse(cls, text: str) -> Bank:
        try:
            packs, cells = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bank {text!r}: write PACKSxCELLS, e.g. 16x24") from None
        if packs < 1 or cells < 1:
            raise argparse.ArgumentTypeError(f"bank {text!r}: packs and cells must be >= 1")
        return cls(packs, cells)


@dataclass(frozen=True)
class Build:
    name: str  # "compiled" or "pure"
    python: str  # interpreter whose dbus-fast has (or lacks) the compiled extensions


@dataclass
class Options:
    # 16 x 24 is the bank the goals are set for; the others show how the cost grows with packs,
    # up to 32, the most a stock bus's per-connection match-rule limit must allow.
    banks: list[Bank] = field(default_factory=lambda: [Bank(n, 24) for n in (1, 2, 4, 8, 16, 32)])
    builds: list[Build] = field(default_factory=lambda: [Build("compiled", sys.executable)])
    duration: float = 60.0
    warmup: float = 10.0
    reactions: int = 50
    stale_events: int = 5
    stale_after: float = 2.0
    readmit_after: float = 1.0
    interval: float = 1.0
    current_per_pack: float = 5.0
    sample_every: float = 0.5
    profile_dir: Path | None = None
    seed: int = 1
    velib_python: str | None = None
    get_items_calls: int = 200


# A few seconds in all: checks that the benchmark itself works, measures nothing worth reading.
QUICK = {"banks": [Bank(2, 4)], "duration": 1.0, "warmup": 0.3, "reactions": 3, "stale_events": 1,
         "stale_after": 0.6, "readmit_after": 0.2, "interval": 0.2, "sample_every": 0.25,
         "get_items_calls": 10}
VELIB_FLOOR = Path(__file__).with_name("velib_floor.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def velib_python(candidate: str = SYSTEM_PYTHON) -> str | None:
    """`candidate` when it can run the velib-style floor (dbus-python and GLib), else None."""
    try:
        done = subprocess.run([candidate, "-c", "import dbus.mainloop.glib, gi.repository.GLib"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return candidate if done.returncode == 0 else None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----- processes ---------------------------------------------------------------------------------

class Sim:
    """The bank process and its stdin/stdout command channel (simproc.py)."""

    def __init__(self, proc: asyncio.subprocess.Process, services: list[str]) -> None:
        self.proc = proc
        self.services = services

    @classmethod
    async def start(cls, address: str, bank: Bank, opts: Options) -> Sim:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aggbatt.bench.simproc", "--bus", address,
            "--packs", str(bank.packs), "--cells", str(bank.cells), "--interval", str(opts.interval),
            "--bank-current", str(opts.current_per_pack * bank.packs),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await _readline(proc, READY_TIMEOUT, "the simulated bank")
        except RuntimeError:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise
        return cls(proc, json.loads(line)["ready"])

    async def command(self, text: str) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{text}\n".encode())
        await self.proc.stdin.drain()
        answer = json.loads(await _readline(self.proc, 10.0, "the simulated bank"))
        if "error" in answer:
            raise RuntimeError(f"simulator: {answer['error']}")
        return float(answer["t"])

    async def stop(self) -> None:
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
        await _reap(self.proc)


async def _readline(proc: asyncio.subprocess.Process, timeout: float, what: str) -> str:
    assert proc.stdout is not None
    try:
        raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    except asyncio.TimeoutError:
        raise RuntimeError(f"{what} did not answer within {timeout:g} s") from None
    if not raw:
        raise RuntimeError(f"{what} exited (code {await proc.wait()})")
    return raw.decode().strip()


async def _reap(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is None:
        try:
            await asyncio.wait_for(proc.wait(), grace)
            return
        except asyncio.TimeoutError:
            proc.kill()
    await proc.wait()


@dataclass
class Measured:
    """A process under measurement (floors.py) and its SIGUSR1 report file."""

    role: str
    proc: asyncio.subprocess.Process
    report: Path
    meter: Meter

    async def counts(self) -> dict[str, Any]:
        self.report.unlink(missing_ok=True)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5.0
        while not self.report.exists():
            if time.monotonic() > deadline or self.proc.returncode is not None:
                raise RuntimeError(f"{self.role} (pid {self.proc.pid}) wrote no report")
            await asyncio.sleep(0.01)
        return json.loads(self.report.read_text(encoding="utf-8"))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await _reap(self.proc)


async def _spawn(role: str, name: str, build: Build, workdir: Path, options: list[str],
                 rest: Sequence[str] = (), *, log: Path | None = None,
                 program: Sequence[str] | None = None) -> Measured:
    report_file = workdir / f"{name}.report.json"
    cmd = ([*program, "--report", str(report_file), *options] if program is not None else
           [build.python, "-m", "aggbatt.bench.floors", "--report", str(report_file), *options,
            role, *rest])
    if log is not None:
        out = open(log, "wb")  # noqa: SIM115 - the child holds it; closed right after the spawn
        try:
            proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=out, stderr=asyncio.subprocess.STDOUT)
        finally:
            out.close()
    else:
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE)
    return Measured(name, proc, report_file, Meter(proc.pid))


async def _ready(measured: Measured) -> None:
    line = await _readline(measured.proc, READY_TIMEOUT, measured.role)
    if line != "ready":
        raise RuntimeError(f"{measured.role} said {line!r} instead of ready")


def _config(workdir: Path, opts: Options) -> Path:
    path = workdir / "bench.toml"
    path.write_text(
        "[freshness]\n"
        f"stale_after = {opts.stale_after}\n"
        f"readmit_after = {opts.readmit_after}\n",
        encoding="utf-8")
    return path


def _valid(values: dict[str, Any], packs: int) -> bool:
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


async def _stale_reactions(sim: Sim, observer: Observer, opts: Options) -> tuple[list[float], int]:
    times: list[float] = []
    missed = 0
    packs = len(sim.services)
    for event in range(opts.stale_events):
        pack = event % packs + 1
        before = observer.values.get(OFFLINE) or 0
        seen = observer.expect(lambda v: (v.get(OFFLINE) or 0) > before)
        last_publish = await sim.command(f"freeze {pack}")
        try:
            times.append(await asyncio.wait_for(seen, opts.stale_after + 10.0) - last_publish)
        except asyncio.TimeoutError:
            missed += 1
        back = observer.expect(lambda v: (v.get(OFFLINE) or 0) <= before)
        await sim.command(f"thaw {pack}")
        await asyncio.wait_for(back, opts.stale_after + opts.readmit_after + 15.0)
        await asyncio.sleep(opts.interval)
    return times, missed


def _process_result(meter: Meter, first: dict[str, Any] | None, last: dict[str, Any] | None,
                    wall: float) -> dict[str, Any]:
    cpu, source = meter.cpu_used()
    ticks = meter.ticks_used()
    mean = meter.rss_mean_kb()
    result: dict[str, Any] = {
        "pid": meter.pid,
        "cpu_s": cpu,
        "cpu_s_per_s": None if cpu is None else cpu / wall,
        "cpu_source": source,
        "cpu_ticks_s_per_s": None if ticks is None else ticks / wall,
        "main_thread_cpu_s_per_s": (None if meter.main_thread_used() is None
                                    else meter.main_thread_used() / wall),
        "wakeups_per_s": None if meter.wakeups_seen() is None else meter.wakeups_seen() / wall,
        "rss_peak_mb": None if meter.peak_kb is None else meter.peak_kb / 1024.0,
        "rss_mean_mb": None if mean is None else mean / 1024.0,
    }
    if first is not None and last is not None:
        for key in ("received", "sent"):
            result[key] = last[key] - first[key]
            result[f"{key}_per_s"] = result[key] / wall
        result["dbus_fast_compiled"] = last["dbus_fast_compiled"]
        result["gc_collections"] = [b - a for a, b in zip(first["gc"]["collections"],
                                                          last["gc"]["collections"])]
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
        daemon = await _spawn(
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
            floors.append(await _spawn("needed", "floor_needed", self.build, self.workdir,
                                       ["--bus", self.address, "--rules", str(rules_file)]))
        floors.append(await _spawn("all", "floor_all", self.build, self.workdir,
                                   ["--bus", self.address, "--ignore", AGGREGATE]))
        if self.opts.velib_python is not None:
            floors.append(await _spawn(
                "velib", "floor_velib", self.build, self.workdir,
                ["--bus", self.address, "--ignore", AGGREGATE],
                program=[self.opts.velib_python, str(VELIB_FLOOR)]))
        floors.append(await _spawn("imports", "import_floor", self.build, self.workdir, []))
        self.measured += floors
        await asyncio.gather(*(_ready(f) for f in floors))
        for m in self.measured:
            held = await match_rules(observer.bus, await connections_of(observer.bus, m.proc.pid))
            self.rule_counts[m.role] = None if held is None else len(held)

    async def window(self, observer: Observer, context: dict[str, Meter]) -> _Window:
        measured = self.measured
        ticks_before = await _daemon_ticks(observer)
        first = dict(zip((m.role for m in measured),
                         await asyncio.gather(*(m.counts() for m in measured))))
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
                        await asyncio.gather(*(m.counts() for m in measured))))
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
        _check_build(run, self.build)
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


def _check_build(run: dict[str, Any], build: Build) -> None:
    compiled = {p.get("dbus_fast_compiled") for p in run["processes"].values()} - {None}
    if build.name == "pure" and True in compiled:
        raise RuntimeError(f"{build.python}: dbus-fast loaded a compiled extension in the pure build")
    if build.name == "compiled" and False in compiled:
        _say(f"warning: {build.python}: dbus-fast runs without its compiled extensions")


def _profile_text(path: Path, limit: int = 30) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


# ----- command line ------------------------------------------------------------------------------

def _host() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version()}


def parse_args(argv: Sequence[str] | None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="CPU, memory and reaction time of aggbatt at bank scale, against floors that "
        "only receive the same input. Prints one table and writes JSON.")
    parser.add_argument("--banks", default=None, help="PACKSxCELLS list (default 1x24,2x24,4x24,8x24,16x24,32x24)")
    parser.add_argument("--duration", type=float, help="measured window in s (default 60)")
    parser.add_argument("--warmup", type=float, help="s between start-up and the window (default 10)")
    parser.add_argument("--reactions", type=int, help="CCL-0 events per run (default 50)")
    parser.add_argument("--stale-events", type=int, help="freeze events per run (default 5)")
    parser.add_argument("--stale-after", type=float, help="the daemon's stale_after, s (default 2)")
    parser.add_argument("--pure-python", metavar="PYTHON",
                        help="also run with this interpreter, whose dbus-fast has no compiled "
                        "extensions (scripts/bench passes .venv-purepy)")
    parser.add_argument("--builds", default=None,
                        help="compiled,pure (default: compiled, plus pure with --pure-python)")
    parser.add_argument("--out", type=Path, help="JSON file (default bench-results/bench-<date>.json)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="cProfile the daemon over the window into DIR (inflates its CPU)")
    parser.add_argument("--velib-python", metavar="PYTHON", default=SYSTEM_PYTHON,
                        help="interpreter with dbus-python and GLib for the velib-style floor "
                        f"(default {SYSTEM_PYTHON}; left out when it lacks them)")
    parser.add_argument("--quick", action="store_true",
                        help="a few seconds on a tiny bank: checks the benchmark, measures nothing")
    args = parser.parse_args(argv)
    opts = Options(**QUICK) if args.quick else Options()  # type: ignore[arg-type]
    if args.banks:
        opts.banks = [Bank.parse(b) for b in args.banks.split(",") if b.strip()]
    for name in ("duration", "warmup", "reactions", "stale_events", "stale_after"):
        if getattr(args, name) is not None:
            setattr(opts, name, getattr(args, name))
    wanted = (args.builds.split(",") if args.builds
              else ["compiled"] + (["pure"] if args.pure_python else []))
    builds = []
    for name in wanted:
        if name == "compiled":
            builds.append(Build("compiled", sys.executable))
        elif name == "pure":
            if not args.pure_python or not Path(args.pure_python).exists():
                parser.error("the pure build needs --pure-python PYTHON (scripts/bench creates "
                             ".venv-purepy)")
            builds.append(Build("pure", args.pure_python))
        else:
            parser.error(f"unknown build {name!r}: compiled or pure")
    opts.builds = builds
    opts.profile_dir = args.profile
    opts.velib_python = velib_python(args.velib_python)
    if opts.velib_python is None:
        _say(f"{args.velib_python} has no dbus-python or GLib: the velib-style floor is left out")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return opts, args.out or report.default_path(Path("bench-results"), stamp)


async def run_all(opts: Options) -> list[dict[str, Any]]:
    runs = []
    for build in opts.builds:
        for bank in opts.banks:
            _say(f"bench: {bank.label} with {build.name} dbus-fast ({opts.warmup:g} s warm-up, "
                 f"{opts.duration:g} s window, {opts.reactions} CCL-0 and {opts.stale_events} "
                 "stale events)")
            with tempfile.TemporaryDirectory(prefix="aggbatt-bench-") as tmp:
                runs.append(await run_one(bank, build, opts, Path(tmp)))
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    opts, out = parse_args(argv)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    runs = asyncio.run(run_all(opts))
    options = asdict(replace(opts, profile_dir=None))
    options["profile_dir"] = None if opts.profile_dir is None else str(opts.profile_dir)
    report.write_json(out, {"schema": 1, "started": started, "host": _host(), "options": options,
                            "runs": runs})
    print(report.table(runs))
    print()
    print(report.LEGEND)
    if opts.profile_dir is not None:
        for run in runs:
            path = Path(run["profile"])
            if path.exists():
                text_path = path.with_suffix(".txt")
                text_path.write_text(_profile_text(path), encoding="utf-8")
                print(f"profile of {run['bank']} {run['build']}: {text_path}")
    print(f"JSON: {out}")
    return 0
