"""Every measured process: the daemon and its floors, each `python -m aggbatt.bench.floors ROLE`.

Rules:

- Every role counts D-Bus messages the same way, so their numbers compare: a wrapper around
  dbus-fast's `MessageBus.send` and `MessageBus._process_message`, which every message a connection
  writes or reads passes (replies and signals included). The cost is one Python call and one
  increment per message, in the daemon and the floors alike. dbus-daemon cannot count for us:
  its Debug.Stats interface reports the messages queued at the moment, not totals.
- Garbage collections are timed per generation through gc.callbacks (cProfile does not see them).
- SIGUSR1 writes a report (JSON: sent, received, gc, loaded modules, whether dbus-fast is compiled)
  to `--report`; the runner sends it at the start and the end of the measured window. With
  `--profile FILE` the first SIGUSR1 also starts cProfile on the main thread (the event loop) and
  the second stops it and writes the pstats to FILE, so the profile covers the window only.
- A floor prints "ready" on stdout once it is subscribed; the daemon announces itself on the bus.

Roles:

| role    | what the process does                                                                  |
|---------|----------------------------------------------------------------------------------------|
| daemon  | `aggbatt run ARGS...` (aggbatt.cli.main), unchanged                                    |
| needed  | adds the match rules in `--rules` (copied from the daemon's connections) and nothing   |
|         | else: no handler, dbus-fast reads and drops each message                               |
| all     | what velib's DbusMonitor (the reference's) receives: every ItemsChanged and            |
|         | PropertiesChanged of every battery service but `--ignore`, plus owner changes          |
| imports | imports IMPORTS, then idles: the memory floor                                          |

The floors subscribe once to the services present when they start: the benchmark's packs stay.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

# What the daemon imports before it does anything: the event loop, dbus-fast, pydantic with the
# config models, and the daemon's own modules (engine, strategies, bus).
IMPORTS = ("asyncio", "dbus_fast", "dbus_fast.aio", "pydantic", "aggbatt.config", "aggbatt.cli",
           "aggbatt.daemon")

BATTERY_PREFIX = "com.victronenergy.battery."
BUSITEM = "com.victronenergy.BusItem"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
NAME_OWNER_RULE = (f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
                   "arg0namespace='com.victronenergy'")

BURST = 32

_counts = {"sent": 0, "received": 0}
_gc: dict[str, list[Any]] = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}


def install_counters() -> None:
    """Count every message through dbus-fast's asyncio MessageBus (module docstring)."""
    from dbus_fast.aio import MessageBus

    send, process = MessageBus.send, MessageBus._process_message

    def counted_send(self: Any, msg: Any) -> Any:
        _counts["sent"] += 1
        return send(self, msg)

    def counted_process(self: Any, msg: Any) -> None:
        _counts["received"] += 1
        process(self, msg)

    MessageBus.send = counted_send  # type: ignore[method-assign]
    MessageBus._process_message = counted_process  # type: ignore[method-assign]


def install_gc_timer() -> None:
    """Time the garbage collector per generation: its pauses are invisible to cProfile."""
    import gc
    import time

    started = [0.0]

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            generation = info["generation"]
            _gc["collections"][generation] += 1
            _gc["seconds"][generation] += time.perf_counter() - started[0]

    gc.callbacks.append(timer)


def dbus_fast_compiled() -> bool:
    """Whether any loaded dbus-fast module is a compiled extension."""
    return any(
        str(getattr(module, "__file__", "") or "").endswith((".so", ".pyd"))
        for name, module in list(sys.modules.items())
        if name == "dbus_fast" or name.startswith("dbus_fast.")
    )


def _install_reporter(report: str, profile: str | None) -> None:
    profiler: Any = None
    dumps = 0

    def dump(signum: int, frame: Any) -> None:
        nonlocal profiler, dumps
        dumps += 1
        if profile is not None:
            if profiler is None:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            elif dumps == 2:
                profiler.disable()
                profiler.dump_stats(profile)
        data = {**_counts, "gc": _gc, "modules": sorted(sys.modules), "dbus_fast_compiled": dbus_fast_compiled(),
                "pid": os.getpid()}
        tmp = f"{report}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, report)

    signal.signal(signal.SIGUSR1, dump)


async def _connect(address: str) -> Any:
    from dbus_fast.aio import MessageBus

    return await MessageBus(bus_address=address).connect()


async def _dbus(bus: Any, member: str, signature: str = "", body: list[Any] | None = None) -> Any:
    from dbus_fast import Message, MessageType

    reply = await bus.call(Message(destination=DBUS, path=DBUS_PATH, interface=DBUS, member=member,
                                   signature=signature, body=body or []))
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(f"{member} failed: {reply.error_name} {reply.body}")
    return reply


async def _hold(bus: Any, rules: Sequence[str]) -> None:
    # A few at a time: dbus-fast drops the connection when the socket's send buffer fills
    # (it treats EAGAIN as fatal), and hundreds of AddMatch calls at once do fill it.
    for start in range(0, len(rules), BURST):
        await asyncio.gather(*(_dbus(bus, "AddMatch", "s", [r]) for r in rules[start:start + BURST]))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    bus.disconnect()


async def floor_needed(address: str, rules: Sequence[str]) -> None:
    await _hold(await _connect(address), rules)


async def floor_all(address: str, ignore: Sequence[str]) -> None:
    bus = await _connect(address)
    listed = (await _dbus(bus, "ListNames")).body[0]
    names = [n for n in listed if n.startswith(BATTERY_PREFIX) and n not in ignore]
    owners = [(await _dbus(bus, "GetNameOwner", "s", [n])).body[0] for n in names]
    rules = [NAME_OWNER_RULE]
    for owner in owners:
        for member in ("ItemsChanged", "PropertiesChanged"):
            rules.append(f"type='signal',sender='{owner}',interface='{BUSITEM}',member='{member}'")
    await _hold(bus, rules)


def import_floor() -> None:
    import importlib

    for name in IMPORTS:
        importlib.import_module(name)
    print("ready", flush=True)
    while True:
        signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m aggbatt.bench.floors")
    parser.add_argument("role", choices=("daemon", "needed", "all", "imports"))
    parser.add_argument("--report", required=True, help="file the SIGUSR1 report goes to")
    parser.add_argument("--profile", help="cProfile the measured window into this file")
    parser.add_argument("--bus", help="bus address (floors)")
    parser.add_argument("--rules", help="JSON file with the match rules to hold (needed)")
    parser.add_argument("--ignore", action="append", default=[], help="service to leave out (all)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="daemon: arguments of aggbatt")
    args = parser.parse_args(argv)
    install_counters()
    install_gc_timer()
    _install_reporter(args.report, args.profile)
    if args.role == "daemon":
        from aggbatt.cli import main as aggbatt_main

        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return aggbatt_main(rest)
    if args.role == "imports":
        import_floor()
        return 0
    if args.bus is None:
        parser.error(f"{args.role} needs --bus")
    if args.role == "needed":
        if args.rules is None:
            parser.error("needed needs --rules")
        with open(args.rules, encoding="utf-8") as f:
            rules = json.load(f)
        asyncio.run(floor_needed(args.bus, rules))
    else:
        asyncio.run(floor_all(args.bus, args.ignore))
    return 0


if __name__ == "__main__":
    sys.exit(main())
