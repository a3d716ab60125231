"""Probes from outside a measured process: CPU and memory from /proc (Linux), rules from the bus.

CPU is utime + stime of the process (all its threads, also exited ones) plus cutime + cstime
(children it has waited for) plus utime + stime of its live descendants. /proc/<pid>/stat gives
them in clock ticks (10 ms): a floor that uses 0.03 % of a core collects 2 ticks a minute, too
coarse for a ratio. So a window is also measured from /proc/<pid>/task/<tid>/schedstat, the same
run time per thread in nanoseconds; that figure is used unless a thread of the tree ended within
the window (its time would be lost), in which case the ticks are. RSS is VmRSS of the process and
its live descendants; the peak is the kernel's high-water mark VmHWM, which also covers the
start-up that no sampling would catch.

dbus-daemon's Debug.Stats interface (in the stock session config) has no message totals, only the
queues of the moment, so messages are counted inside the measured processes (floors.py); it does
list every connection's match rules, which is how floor_needed copies the daemon's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from aggbatt.bus.values import unwrap

_TICK = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """Live direct children, via /proc/<pid>/task/*/children (kernel >= 3.5)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(_children(current))
    return pids


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds used so far by `pid`, its reaped children and its live descendants."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # After the command name: utime, stime, cutime, cstime are fields 14-17 of stat(5).
    total = sum(int(v) for v in fields[11:15])
    for child in tree(pid)[1:]:
        child_fields = _stat_fields(child)
        if child_fields is not None:
            total += int(child_fields[11]) + int(child_fields[12])
    return total / _TICK


def _tasks(pid: int) -> list[str]:
    try:
        return [f"{pid}/{tid}" for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def run_times_ns(pid: int) -> dict[str, int]:
    """Nanoseconds on a CPU so far of every live thread of `pid` and its live descendants."""
    times: dict[str, int] = {}
    for member in tree(pid):
        for task in _tasks(member):
            try:
                with open(f"/proc/{task.replace('/', '/task/')}/schedstat", encoding="ascii") as f:
                    times[task] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return times


def _status_field(pid: int, key: str) -> int | None:
    """The first number after `key` in /proc/<pid>/status (kB for the Vm* lines)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wakeups(pid: int) -> int | None:
    """Times the process's main thread (its event loop) went to sleep and was woken so far."""
    return _status_field(pid, "voluntary_ctxt_switches:")


def rss_kb(pid: int) -> int | None:
    """Resident memory of `pid` and its live descendants, in KiB."""
    values = [_status_field(p, "VmRSS:") for p in tree(pid)]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def peak_rss_kb(pid: int) -> int | None:
    """The highest resident memory `pid` itself ever had (VmHWM), in KiB."""
    return _status_field(pid, "VmHWM:")


@dataclass
class Meter:
    """CPU over a window and RSS samples within it, for one process tree."""

    pid: int
    cpu_start: float | None = None
    cpu_end: float | None = None
    ns_start: dict[str, int] = field(default_factory=dict)
    ns_end: dict[str, int] = field(default_factory=dict)
    wakeups_start: int | None = None
    wakeups_end: int | None = None
    rss_samples: list[int] = field(default_factory=list)
    peak_kb: int | None = None

    def begin(self) -> None:
        self.cpu_start = cpu_seconds(self.pid)
        self.ns_start = run_times_ns(self.pid)
        self.wakeups_start = wakeups(self.pid)
        self.rss_samples.clear()
        self.sample()

    def sample(self) -> None:
        rss = rss_kb(self.pid)
        if rss is not None:
            self.rss_samples.append(rss)

    def end(self) -> None:
        self.sample()
        self.ns_end = run_times_ns(self.pid)
        self.wakeups_end = wakeups(self.pid)
        self.cpu_end = cpu_seconds(self.pid)
        self.peak_kb = peak_rss_kb(self.pid)

    def wakeups_seen(self) -> int | None:
        if self.wakeups_start is None or self.wakeups_end is None:
            return None
        return self.wakeups_end - self.wakeups_start

    def ticks_used(self) -> float | None:
        """CPU seconds in the window from utime/stime (10 ms resolution)."""
        if self.cpu_start is None or self.cpu_end is None:
            return None
        return self.cpu_end - self.cpu_start

    def precise_used(self) -> float | None:
        """CPU seconds in the window from the threads' run times; None if a thread ended."""
        if not self.ns_end or not set(self.ns_start) <= set(self.ns_end):
            return None
        return sum(t - self.ns_start.get(task, 0) for task, t in self.ns_end.items()) / 1e9

    def main_thread_used(self) -> float | None:
        """CPU seconds in the window of the main thread alone (the event loop)."""
        main = f"{self.pid}/{self.pid}"
        if main not in self.ns_start or main not in self.ns_end:
            return None
        return (self.ns_end[main] - self.ns_start[main]) / 1e9

    def cpu_used(self) -> tuple[float | None, str]:
        """The window's CPU seconds and where they come from (module docstring)."""
        precise = self.precise_used()
        if precise is not None:
            return precise, "schedstat"
        return self.ticks_used(), "ticks"

    def rss_mean_kb(self) -> float | None:
        return sum(self.rss_samples) / len(self.rss_samples) if self.rss_samples else None


# ----- the bus's view of a process (org.freedesktop.DBus and its Debug.Stats interface) -------------

DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
STATS = "org.freedesktop.DBus.Debug.Stats"


async def _bus_call(bus: MessageBus, interface: str, member: str, signature: str = "",
                    body: list[Any] | None = None) -> Message | None:
    reply = await asyncio.wait_for(bus.call(Message(
        destination=DBUS, path=DBUS_PATH, interface=interface, member=member,
        signature=signature, body=body or [])), 5.0)
    if reply is None or reply.message_type is MessageType.ERROR:
        return None
    return reply


async def connections_of(bus: MessageBus, pid: int) -> list[str]:
    """The unique names of every connection that process `pid` holds on the bus."""
    listed = await _bus_call(bus, DBUS, "ListNames")
    names = [n for n in (listed.body[0] if listed else []) if n.startswith(":")]
    owners = await asyncio.gather(*(
        _bus_call(bus, DBUS, "GetConnectionUnixProcessID", "s", [n]) for n in names))
    return sorted(n for n, r in zip(names, owners, strict=True) if r is not None and r.body[0] == pid)


async def match_rules(bus: MessageBus, connections: list[str]) -> list[str] | None:
    """The match rules these connections hold, or None when the bus has no Debug.Stats."""
    reply = await _bus_call(bus, STATS, "GetAllMatchRules")
    if reply is None:
        return None
    held: dict[str, list[str]] = reply.body[0]
    return sorted(rule for name in connections for rule in held.get(name, []))


# ----- the aggregate as a Venus consumer sees it --------------------------------------------------

BUSITEM = "com.victronenergy.BusItem"
Predicate = Callable[[Mapping[str, Any]], bool]


@dataclass
class _Waiter:
    predicate: Predicate
    future: asyncio.Future[float]


class Observer:
    """Follows one published service through GetItems and its ItemsChanged signals.

    `expect(predicate)` returns a future that resolves to the time.monotonic() at which a signal
    (or the GetItems reply) first made the predicate true; the time is taken as the message is
    handled, so it includes this client's own receive latency, as any consumer's would.
    """

    def __init__(self, bus: MessageBus, service: str) -> None:
        self.bus = bus
        self.service = service
        self.values: dict[str, Any] = {}
        self.owner: str | None = None
        self._appeared = asyncio.Event()
        self._waiters: list[_Waiter] = []

    @classmethod
    async def connect(cls, address: str, service: str) -> Observer:
        observer = cls(await MessageBus(bus_address=address).connect(), service)
        observer.bus.add_message_handler(observer._on_message)
        for rule in (
            f"type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',"
            f"arg0='{service}'",
            f"type='signal',sender='{service}',path='/',interface='{BUSITEM}',member='ItemsChanged'",
        ):
            await _bus_call(observer.bus, DBUS, "AddMatch", "s", [rule])
        return observer

    def close(self) -> None:
        self.bus.disconnect()

    def expect(self, predicate: Predicate) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(predicate, future)
        if predicate(self.values):
            future.set_result(time.monotonic())
        else:
            self._waiters.append(waiter)
        return future

    async def wait_appeared(self, timeout: float) -> None:
        await asyncio.wait_for(self._appeared.wait(), timeout)

    async def read_all(self) -> None:
        """GetItems once (after the service appeared), merged under values signals already set."""
        reply = await asyncio.wait_for(self.bus.call(Message(
            destination=self.service, path="/", interface=BUSITEM, member="GetItems")), 5.0)
        if reply is None or reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"GetItems of {self.service} failed: {reply and reply.body}")
        now = time.monotonic()
        for path, entry in reply.body[0].items():
            self.values.setdefault(path, unwrap(entry.get("Value")))
        self._check(now)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        now = time.monotonic()
        if msg.member == "NameOwnerChanged" and msg.signature == "sss":
            name, _, new = msg.body
            if name == self.service:
                self.owner = new or None
                if new:
                    self._appeared.set()
            return
        if msg.member == "ItemsChanged" and msg.sender == self.owner and msg.signature == "a{sa{sv}}":
            for path, entry in msg.body[0].items():
                if "Value" in entry:
                    self.values[path] = unwrap(entry["Value"])
            self._check(now)

    def _check(self, now: float) -> None:
        pending = []
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if waiter.predicate(self.values):
                waiter.future.set_result(now)
            else:
                pending.append(waiter)
        self._waiters = pending
