"""Follow other Victron services: discovery, one GetItems scan, signal routing by sender.

Rules (docs/victron-contract.md §2 and §6.2):

- The message handler is added first, then the NameOwnerChanged match (arg0namespace
  com.victronenergy), then ListNames, so no service can appear unseen in between. The handler
  always returns None: dbus-fast runs user handlers before method dispatch, and a truthy return
  would swallow calls to a service published on the same connection.
- A service is keyed by its unique name (`:1.x`), the only sender a signal carries. Its record
  exists before the scan so signals that arrive during the scan are kept, and it becomes public
  (`services`, on_added) only after a successful scan.
- Match rules carry `sender=<unique name>`. PropertiesChanged is matched per wanted path or
  per namespace (see "Match-rule plan"), so the bus daemon drops cell voltages, history etc.
  before they wake this process: the main CPU lever on a GX. If the bus refuses the plan, the
  service falls back to one sender-wide rule and the filter runs in-process.
- Every call is bounded by `call_timeout`; dbus-fast calls never time out on their own.
- At most BURST match-rule calls are in flight: dbus-fast drops the whole connection when the
  socket's send buffer is full (it treats EAGAIN as fatal, python-dbus-next#153), and a burst of
  ~240 RemoveMatch (close() with 16 packs) did fill it.
- Malformed input (wrong signatures, garbage GetItems, no /DeviceInstance) never raises: the
  service or signal is ignored and logged once.
- What is kept of a service is bounded, whatever it sends. A scan or ItemsChanged is read by
  looking up the wanted paths in it, so its cost follows what we read, not what it lists. At most
  `max_paths` paths are kept per service (values of a class followed in full, and the listed paths
  the match-rule plan weighs); a service that lists more is logged once, its extra paths ignored,
  and its wanted paths get one rule each, since its namespaces cannot be judged.
- GetItems is called on a second connection served by a thread of its own (bus/scanner.py): a
  reply of tens of MB is decoded and cut down to what is kept there, not on the loop that handles
  signals. If that connection cannot be opened or is lost, scans use the main one.

Theory of operation. Owner changes of one well-known name are handled strictly in order by one
worker task per name, so a quick vanish + return cannot race (victron-contract §2.5). Signals are applied
synchronously in the handler. The scan reply is applied only to paths no signal has updated since
the record was created: asyncio resumes `await call()` after signals that arrived later were
already dispatched, so the reply may be older than what the cache holds (victron-contract §2.3).

| Event (in order, per name)        | name not tracked         | name tracked with owner A           |
|-----------------------------------|--------------------------|-------------------------------------|
| NameOwnerChanged: new owner B     | subscribe, scan B        | B is A: ignore; else drop A, scan B |
| ListNames + GetNameOwner: owner B | subscribe, scan B (1)    | ignore (NameOwnerChanged decides)   |
| NameOwnerChanged: owner A gone    | nothing                  | drop A: rules, values, on_removed   |
| scan of B fails                   | -                        | drop B, rescan B later (2)          |
| rescan of B is due                | rescan B if B still owns | ignore                              |

(1) unless a NameOwnerChanged for the name arrived since ListNames: then the listing is outdated.
(2) A service whose scan fails (an error, no answer, no valid /DeviceInstance) may only be busy:
    a driver that takes ~11 s to answer at boot, or a BMS that answers once its serial link is
    up, would otherwise stay unfollowed for as long as it is on the bus. So it is rescanned after
    `retry_delay`, doubling up to `retry_max`, until it answers or its owner changes; one warning
    when it fails (none when an owner change already waits: most likely it left), one line when
    it answers. Rescans go through the name's worker like owner changes, so a service has at
    most one call outstanding and a rescan never races a vanish. Until it answers it never fires
    on_added/on_removed and holds no match rules; `unanswered()` lists it.

`start(settle=...)` waits at most `settle` seconds for the services listed at start-up: one
service that never answers must not hold up the caller for two call timeouts. Scans that take
longer go on in the background and fire on_added when they succeed.

Match-rule plan. dbus-daemon caps the match rules of one connection, so PropertiesChanged is
matched per wanted path or per sub-tree as bus/match_rules.py plans it from the paths a scan listed.

The paths are known only after the scan, and rules must be in place before it (a change between
GetItems and AddMatch would be lost). So a service is subscribed sender-wide for its scan, then
moved to its plan; the plan's rules are added before the sender-wide one is removed, so nothing is
missed in the switch. Switches hold a lock: while many packs appear at once only one service holds
both rule sets, so the peak is the steady count plus one plan. Paths a service adds after its scan
are not counted: wanted ones are covered anyway, unwanted ones cost at most in-process filtering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus
from dbus_fast.validators import is_object_path_valid

from aggbatt.bus.busitem import BUSITEM, DBUS, DBUS_PATH, CallFailed, call
from aggbatt.bus.match_rules import RulePlan, plan_rules, rules_for
from aggbatt.bus.scanner import Scanner
from aggbatt.bus.values import unwrap

PREFIX = "com.victronenergy."
NAME_OWNER_RULE = (
    f"type='signal',sender='{DBUS}',path='{DBUS_PATH}',interface='{DBUS}',"
    "member='NameOwnerChanged',arg0namespace='com.victronenergy'"
)
# Classes that have no /DeviceInstance by design (victron-contract §2.1 step 6).
NO_INSTANCE_CLASSES = frozenset({"settings"})
BURST = 32
# Paths kept per service. A serialbattery pack with 32 cells and every optional path lists ~300;
# a service listing hundreds of thousands would otherwise cost hundreds of MB.
MAX_PATHS = 10_000

_SIGNAL = MessageType.SIGNAL

log = logging.getLogger(__name__)

@dataclass
class RemoteService:
    """What we know of one followed service; values are unwrapped, None means invalid."""

    name: str
    owner: str
    service_class: str
    values: dict[str, Any] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)
    appeared_at: float = 0.0
    last_change: float = 0.0
    device_instance: int | None = None

    def get(self, path: str, default: Any = None) -> Any:
        value = self.values.get(path)
        return default if value is None else value


@dataclass(frozen=True)
class Unanswered:
    """A service on the bus whose scan failed and is being retried."""

    name: str
    owner: str
    error: str
    attempts: int
    # Seconds since its first failed scan.
    age: float


@dataclass(eq=False)
class _Retry:
    owner: str
    error: str
    since: float
    delay: float
    attempts: int = 1
    timer: asyncio.TimerHandle | None = None
    warned: bool = False


@dataclass(eq=False)
class _Tracked:
    """Monitor-private bookkeeping of one unique owner."""

    service: RemoteService
    paths: frozenset[str] | None
    # Every path the scan listed, wanted or not: the base of the match-rule plan.
    known: frozenset[str] = frozenset()
    # It listed more than max_paths: `known` is empty and the plan uses single-path rules.
    crowded: bool = False
    rules: set[str] = field(default_factory=set)
    ready: bool = False
    # Paths a signal updated while a scan was in flight; None when no scan is in flight.
    seen: set[str] | None = field(default_factory=set)
    complaints: set[str] = field(default_factory=set)


def class_of(name: str) -> str | None:
    """'com.victronenergy.battery.ttyUSB0' -> 'battery'; None for names outside com.victronenergy."""
    if not name.startswith(PREFIX):
        return None
    return name[len(PREFIX) :].split(".", 1)[0] or None


def _same(old: Any, new: Any) -> bool:
    """Equal as velib compares (1 == 1.0), with NaN equal to NaN so it is not a change each time."""
    if old is None or new is None:
        return old is new
    if old == new:
        return True
    return isinstance(old, float) and isinstance(new, float) and old != old and new != new


def _device_instance(entry: Any) -> int | None:
    value = unwrap(entry.get("Value")) if isinstance(entry, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _frozen(paths: Collection[str] | None) -> frozenset[str] | None:
    if paths is None:
        return None
    if isinstance(paths, str):
        raise TypeError("paths must be a collection of paths, not one string")
    bad = [p for p in paths if not is_object_path_valid(p) or p == "/"]
    if bad:
        raise ValueError(f"not BusItem paths: {bad}")
    return frozenset(paths)


class Monitor:
    """Discovers and follows the services of the wanted classes; see the module docstring."""

    def __init__(
        self,
        bus: MessageBus,
        classes: Mapping[str, Collection[str] | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        ignore: Collection[str] = (),
        on_added: Callable[[RemoteService], None] | None = None,
        on_removed: Callable[[RemoteService], None] | None = None,
        on_changed: Callable[[RemoteService, Mapping[str, Any]], None] | None = None,
        call_timeout: float = 5.0,
        retry_delay: float = 1.0,
        retry_max: float = 30.0,
        max_paths: int = MAX_PATHS,
    ) -> None:
        self.bus = bus
        self._classes = {cls: _frozen(paths) for cls, paths in classes.items()}
        self._clock = clock
        self._ignore = frozenset(ignore)
        self._on_added = on_added
        self._on_removed = on_removed
        self._on_changed = on_changed
        self.call_timeout = call_timeout
        self.retry_delay = retry_delay
        self.retry_max = retry_max
        self.max_paths = max_paths
        self.services: dict[str, RemoteService] = {}
        # BusItem signals that reached the handler: shows what the match rules let through.
        self.signals_received = 0
        # PropertiesChanged of unwanted paths dropped in-process (admitted by a namespace rule,
        # the sender-wide rule during a scan, or the fallback).
        self.unwanted_signals = 0
        # Held while a service moves to a new rule set (module docstring, "Match-rule plan").
        self._switching = asyncio.Lock()
        self._by_owner: dict[str, _Tracked] = {}
        self._by_name: dict[str, _Tracked] = {}
        self._queues: dict[str, deque[Callable[[], Awaitable[None]]]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._logged: set[tuple[str, str]] = set()
        # Services whose scan failed, by well-known name (module docstring, note (2)).
        self._retries: dict[str, _Retry] = {}
        # NameOwnerChanged signals seen per name: a listing they overtook is outdated.
        self._owner_events: dict[str, int] = {}
        self._started = False
        self._closed = False
        # GetItems goes through it, so a huge reply is never decoded on this loop (bus/scanner.py).
        self._scanner: Scanner | None = None

    # ----- public ------------------------------------------------------------------------

    async def start(self, settle: float | None = None) -> None:
        """Subscribe to owner changes, list the names on the bus and scan every wanted service;
        wait at most `settle` seconds for those scans (None: until all are done)."""
        if self._started:
            raise RuntimeError("Monitor.start() called twice")
        self._started = True
        try:
            self._scanner = await Scanner.open(self.bus, self.call_timeout)
        except Exception as exc:  # noqa: BLE001 - whatever fails, the main connection still works
            log.warning("no second connection for scans (%s): scanning on the main one, where a "
                        "service listing a huge number of paths holds up the daemon", exc)
        self.bus.add_message_handler(self._on_message)
        await self._dbus("AddMatch", "s", [NAME_OWNER_RULE])
        await self._scan_listed(None, settle)

    async def answers(self, name: str, timeout: float) -> bool:
        """Whether `name`'s owner answers one GetValue within `timeout` seconds (a liveness probe
        for a quiet service). An error reply is an answer too: the driver's bus thread runs."""
        tracked = self._by_name.get(name)
        if tracked is None:
            return True
        msg = Message(destination=tracked.service.owner, path="/Dc/0/Voltage", interface=BUSITEM,
                      member="GetValue")
        try:
            await call(self.bus, msg, timeout)
        except CallFailed as exc:
            # An error reply, a closed connection or a gone owner is no hang.
            return not exc.timed_out
        return True

    def of_class(self, service_class: str) -> list[RemoteService]:
        return [s for s in self.services.values() if s.service_class == service_class]

    def unanswered(self) -> list[Unanswered]:
        """Services on the bus that are not followed because their scan fails (retried)."""
        now = self._clock()
        return [Unanswered(name, r.owner, r.error, r.attempts, now - r.since)
                for name, r in sorted(self._retries.items())]

    async def set_paths(self, service_class: str, paths: Collection[str] | None) -> None:
        """Change which paths of a class are followed; a new class is discovered at once."""
        frozen = _frozen(paths)
        known = service_class in self._classes
        self._classes[service_class] = frozen
        if not self._started or self._closed:
            return
        if not known:
            await self._scan_listed(service_class)
            return
        workers = {
            self._enqueue(name, self._job_paths(name, tracked.service.owner))
            for name, tracked in list(self._by_name.items())
            if tracked.service.service_class == service_class
        }
        await asyncio.gather(*workers, return_exceptions=True)

    async def close(self) -> None:
        """Stop following: remove the handler and every match rule; no callbacks fire."""
        if self._closed:
            return
        self._closed = True
        if self._scanner is not None:
            self._scanner.stop()
        self.bus.remove_message_handler(self._on_message)
        for name in list(self._retries):
            self._stop_retrying(name)
        workers = list(self._workers.values())
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        rules = [NAME_OWNER_RULE] if self._started else []
        for tracked in self._by_owner.values():
            rules.extend(tracked.rules)
        if self.bus.connected:
            await self._match_calls("RemoveMatch", rules)
        self._by_owner.clear()
        self._by_name.clear()
        self.services.clear()
        if self._scanner is not None:
            await self._scanner.close()

    # ----- signal handler (hot path: keep it cheap) ----------------------------------------

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not _SIGNAL:
            return None
        if msg.interface == BUSITEM:
            self.signals_received += 1
            tracked = self._by_owner.get(msg.sender)
            if tracked is None:
                return None
            member = msg.member
            if member == "PropertiesChanged":
                self._on_properties(tracked, msg)
            elif member == "ItemsChanged":
                self._on_items(tracked, msg)
        elif msg.member == "NameOwnerChanged" and msg.sender == DBUS and msg.interface == DBUS:
            self._on_owner_changed(msg)
        return None

    def _on_properties(self, tracked: _Tracked, msg: Message) -> None:
        path = msg.path
        if path is None:  # never for a signal: D-Bus requires its object path
            return
        paths = tracked.paths
        if paths is not None and path not in paths:
            self.unwanted_signals += 1
            return
        if msg.signature != "a{sv}":
            self._complain(tracked, "PropertiesChanged", f"signature {msg.signature!r}")
            return
        variant = msg.body[0].get("Value")
        if variant is None:
            self._complain(tracked, "PropertiesChanged", "an entry without Value")
            return
        self._apply(tracked, {path: unwrap(variant)})

    def _on_items(self, tracked: _Tracked, msg: Message) -> None:
        if msg.signature != "a{sa{sv}}":
            self._complain(tracked, "ItemsChanged", f"signature {msg.signature!r}")
            return
        changes: dict[str, Any] = {}
        for path, entry in self._wanted_entries(tracked, msg.body[0]):
            variant = entry.get("Value")
            if variant is not None:
                changes[path] = unwrap(variant)
        if changes:
            self._apply(tracked, changes)

    def _apply(self, tracked: _Tracked, changes: Mapping[str, Any]) -> None:
        # A value counts as changed only when it differs from the cached one. Our own publisher
        # (and some peers) send ItemsChanged AND PropertiesChanged for one change, and clients
        # must subscribe to both because Victron publishers use one or the other (victron-contract §1.7,
        # 2.4). Comparing with the cache, as velib's DbusMonitor does, processes that change once.
        service = tracked.service
        values = service.values
        now = self._clock()
        changed: dict[str, Any] = {}
        for path, value in changes.items():
            if path in values:
                if _same(values[path], value):
                    continue
            elif len(values) >= self.max_paths:
                self._too_many(service.name, len(values) + 1)
                continue
            values[path] = value
            service.changed_at[path] = now
            changed[path] = value
        if tracked.seen is not None:
            tracked.seen.update(changes)
        if not changed or not tracked.ready:
            return
        service.last_change = now
        if self._on_changed is not None:
            try:
                self._on_changed(service, changed)
            except Exception:
                log.exception("on_changed callback failed for %s", service.name)

    def _on_owner_changed(self, msg: Message) -> None:
        if msg.signature != "sss":
            return
        name, old, new = msg.body
        if name in self._by_name or self._wanted(name):
            self._owner_events[name] = self._owner_events.get(name, 0) + 1
            self._enqueue(name, self._job_owner(name, old, new, listed=False))

    # ----- per-name worker -------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        return name not in self._ignore and class_of(name) in self._classes

    def _enqueue(self, name: str, job: Callable[[], Awaitable[None]]) -> asyncio.Future[None]:
        if self._closed:
            # A listing or set_paths that was in flight when close() ran: nothing to follow.
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = deque()
            self._workers[name] = asyncio.get_running_loop().create_task(self._work(name, queue))
        queue.append(job)
        return self._workers[name]

    async def _work(self, name: str, queue: deque[Callable[[], Awaitable[None]]]) -> None:
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job()
                except Exception:
                    log.exception("following %s failed", name)
        finally:
            del self._queues[name]
            del self._workers[name]

    def _job_owner(self, name: str, old: str, new: str, *, listed: bool) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if old:
                self._forget(name, old)
            if new:
                await self._add(name, new, listed)

        return job

    def _job_paths(self, name: str, owner: str) -> Callable[[], Awaitable[None]]:
        return lambda: self._resubscribe(name, owner)

    def _job_retry(self, name: str, owner: str) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            retry = self._retries.get(name)
            if retry is None or retry.owner != owner or owner in self._by_owner:
                return
            retry.timer = None
            await self._add(name, owner, listed=False)

        return job

    def _events_waiting(self, name: str) -> bool:
        return bool(self._queues.get(name))

    # ----- adding, scanning, removing ----------------------------------------------------------

    async def _scan_listed(self, only_class: str | None, settle: float | None = None) -> None:
        events_before = dict(self._owner_events)
        reply = await self._dbus("ListNames")
        names = [
            n
            for n in reply.body[0]
            if self._wanted(n) and (only_class is None or class_of(n) == only_class)
        ]
        owners = await asyncio.gather(
            *(self._dbus("GetNameOwner", "s", [n]) for n in names), return_exceptions=True
        )
        workers = {
            self._enqueue(n, self._job_owner(n, "", o.body[0], listed=True))
            for n, o in zip(names, owners, strict=True)
            if isinstance(o, Message) and self._owner_events.get(n) == events_before.get(n)
        }
        if workers:
            # Workers log their own failures; asyncio.wait neither raises nor cancels them.
            await asyncio.wait(workers, timeout=settle)

    async def _add(self, name: str, owner: str, listed: bool) -> None:
        present = self._by_owner.get(owner)
        if present is not None:
            if present.service.name != name:
                self._log_once(name, "shared", logging.WARNING,
                               "%s shares connection %s with %s; only %s is followed",
                               name, owner, present.service.name, present.service.name)
            return
        current = self._by_name.get(name)
        if current is not None:
            if listed:
                return
            self._forget(name, current.service.owner)
        service_class = class_of(name)
        if service_class is None or service_class not in self._classes or name in self._ignore:
            return
        tracked = _Tracked(RemoteService(name, owner, service_class), self._classes[service_class])
        self._by_owner[owner] = tracked
        self._by_name[name] = tracked
        error = await self._converge(tracked, rules_for(owner, None))
        if error is None:
            error = await self._scan(tracked)
            if error is None and tracked.paths is not None:
                await self._subscribe(tracked)
        if self._by_owner.get(owner) is not tracked:
            return
        if error is not None:
            self._drop(tracked)
            self._retry_later(name, owner, error)
            return
        retry = self._retries.get(name)
        if retry is not None:
            self._stop_retrying(name)
            log.info("%s (%s) answers now, after %d failed scan(s) in %.0f s", name, owner,
                     retry.attempts, self._clock() - retry.since)
        tracked.ready = True
        tracked.seen = None
        self.services[name] = tracked.service
        log.info("following %s (%s, instance %s)", name, owner, tracked.service.device_instance)
        self._callback(self._on_added, tracked.service)

    async def _scan(self, tracked: _Tracked) -> str | None:
        """One GetItems; apply it to the paths no signal has updated. Return why it failed."""
        service = tracked.service
        try:
            listed, items = await self._get_items(tracked)
        except CallFailed as exc:
            return str(exc)
        instance = _device_instance(items.get("/DeviceInstance"))
        if instance is None and service.service_class not in NO_INSTANCE_CLASSES:
            return "no valid /DeviceInstance (a service must publish it before claiming its name)"
        seen = tracked.seen or set()
        now = self._clock()
        tracked.crowded = listed > self.max_paths
        if tracked.crowded:
            self._too_many(service.name, listed)
        tracked.known = frozenset() if tracked.crowded else frozenset(items)
        entries = self._wanted_entries(tracked, items)
        if tracked.paths is None:
            entries = islice(entries, self.max_paths)
        for path, entry in entries:
            if path in seen:
                continue
            variant = entry.get("Value")
            if variant is not None:
                service.values[path] = unwrap(variant)
                service.changed_at[path] = now
        service.device_instance = instance
        service.appeared_at = now
        service.last_change = now
        return None

    async def _resubscribe(self, name: str, owner: str) -> None:
        tracked = self._by_owner.get(owner)
        if tracked is None or tracked.service.name != name:
            return
        service = tracked.service
        paths = self._classes[service.service_class]
        old = tracked.paths
        if paths == old:
            return
        tracked.paths = paths
        error = await self._subscribe(tracked)
        if error is not None:
            log.warning("%s: cannot change its subscriptions: %s", name, error)
        if paths is not None:
            for path in [p for p in service.values if p not in paths]:
                del service.values[path]
                service.changed_at.pop(path, None)
        if old is None or (paths is not None and paths <= old):
            return
        tracked.seen = set()
        try:
            _, items = await self._get_items(tracked)
        except CallFailed as exc:
            log.warning("%s: cannot read the newly wanted paths: %s", name, exc)
            return
        finally:
            seen, tracked.seen = tracked.seen, None
        if self._by_owner.get(owner) is not tracked:
            return
        fresh = {
            path: unwrap(entry["Value"])
            for path, entry in self._wanted_entries(tracked, items)
            if path not in old and path not in seen and "Value" in entry
        }
        self._apply(tracked, fresh)

    def _retry_later(self, name: str, owner: str, error: str) -> None:
        retry = self._retries.get(name)
        if retry is None or retry.owner != owner:
            self._stop_retrying(name)
            retry = self._retries[name] = _Retry(owner, error, self._clock(), self.retry_delay)
        else:
            retry.attempts += 1
            retry.error = error
            retry.delay = min(retry.delay * 2, self.retry_max)
        # A failure with an owner change already queued is most likely the service leaving:
        # that event ends the retry, and the warning would only be noise.
        if not retry.warned and not self._events_waiting(name):
            retry.warned = True
            log.warning("cannot follow %s (%s): %s; retrying after %g s, doubling up to %g s, "
                        "until it answers", name, owner, error, retry.delay, self.retry_max)
        retry.timer = asyncio.get_running_loop().call_later(
            retry.delay, self._enqueue, name, self._job_retry(name, owner))

    def _stop_retrying(self, name: str) -> None:
        retry = self._retries.pop(name, None)
        if retry is not None and retry.timer is not None:
            retry.timer.cancel()

    def _forget(self, name: str, owner: str) -> None:
        retry = self._retries.get(name)
        if retry is not None and retry.owner == owner:
            self._stop_retrying(name)
            log.info("%s (%s) left the bus before its scan succeeded", name, owner)
        tracked = self._by_owner.get(owner)
        if tracked is None:
            return
        was_ready = tracked.ready
        self._drop(tracked)
        if was_ready:
            log.info("%s (%s) left the bus", name, owner)
            self._callback(self._on_removed, tracked.service)
            tracked.service.values.clear()
            tracked.service.changed_at.clear()

    def _drop(self, tracked: _Tracked) -> None:
        service = tracked.service
        self._by_owner.pop(service.owner, None)
        if self._by_name.get(service.name) is tracked:
            del self._by_name[service.name]
        if self.services.get(service.name) is tracked.service:
            del self.services[service.name]
        tracked.ready = False
        self._remove_matches(tracked.rules)
        tracked.rules = set()

    # ----- match rules -------------------------------------------------------------------------

    async def _subscribe(self, tracked: _Tracked) -> str | None:
        """Move the service to the rules its wanted and known paths call for."""
        owner = tracked.service.owner
        paths = tracked.paths
        if paths is None:
            plan = None
        elif tracked.crowded:
            plan = RulePlan(frozenset(), paths)
        else:
            plan = plan_rules(paths, tracked.known)
        async with self._switching:
            before = set(tracked.rules)
            error = await self._converge(tracked, rules_for(owner, plan))
            if error is None or plan is None or self._by_owner.get(owner) is not tracked:
                return error
            self._log_once(tracked.service.name, "rules", logging.WARNING,
                           "%s: the bus refused its match rules (%s); following all its "
                           "PropertiesChanged instead, which costs CPU (raise "
                           "max_match_rules_per_connection in the bus config)",
                           tracked.service.name, error)
            # Free what the refused attempt took; the old rules stay until the wide one is in.
            wide = rules_for(owner, None)
            attempt = tracked.rules - before - wide
            self._remove_matches(attempt)
            tracked.rules -= attempt
            return await self._converge(tracked, wide)

    async def _converge(self, tracked: _Tracked, wanted: set[str]) -> str | None:
        """Add the missing rules concurrently; remove stale ones only once all were added.

        A rule counts as held from the moment its AddMatch is sent, and until the bus refuses it,
        so that close() or a vanish while the calls are in flight (or unanswered) removes it too;
        RemoveMatch of a rule the bus never added is harmless.
        """
        missing = [r for r in wanted if r not in tracked.rules]
        tracked.rules.update(missing)
        results = await self._match_calls("AddMatch", missing)
        errors = []
        for rule, result in zip(missing, results, strict=True):
            if isinstance(result, Message):
                continue
            errors.append(result)
            if isinstance(result, CallFailed) and result.error_name is not None:
                tracked.rules.discard(rule)
        if self._by_owner.get(tracked.service.owner) is not tracked:
            self._remove_matches(tracked.rules)
            tracked.rules = set()
            return "it went away while subscribing"
        if errors:
            return str(errors[0])
        self._remove_matches(tracked.rules - wanted)
        tracked.rules &= wanted
        return None

    async def _match_calls(self, member: str, rules: list[str]) -> list[Message | BaseException]:
        """AddMatch or RemoveMatch each rule, BURST at a time; the results in order.

        A call that got no answer at all (timeout, lost connection) ends the work: the rest
        would only wait for call_timeout each, so they share that failure.
        """
        results: list[Message | BaseException] = []
        for start in range(0, len(rules), BURST):
            results += await asyncio.gather(
                *(self._dbus(member, "s", [r]) for r in rules[start : start + BURST]),
                return_exceptions=True,
            )
            lost = [r for r in results if isinstance(r, CallFailed) and r.error_name is None]
            if lost:
                return results + [lost[0]] * (len(rules) - len(results))
        return results

    def _remove_matches(self, rules: Collection[str]) -> None:
        """Fire and forget: the bus applies them in order, and a failure leaves only a dead rule."""
        if not self.bus.connected:
            return
        for rule in rules:
            try:
                self.bus.send(Message(destination=DBUS, path=DBUS_PATH, interface=DBUS,
                                      member="RemoveMatch", signature="s", body=[rule],
                                      flags=MessageFlag.NO_REPLY_EXPECTED))
            except Exception as exc:
                log.debug("RemoveMatch not sent: %s", exc)
                return

    # ----- calls and helpers -------------------------------------------------------------------

    async def _dbus(self, member: str, signature: str = "", body: list[Any] | None = None) -> Message:
        return await self._call(DBUS, DBUS_PATH, DBUS, member, signature, body)

    async def _get_items(self, tracked: _Tracked) -> tuple[int, Mapping[str, Any]]:
        """How many paths the service lists, and its GetItems entries: all of them when it lists
        at most max_paths, else only /DeviceInstance and the wanted ones (max_paths at most).

        Through the scanner, the reply is decoded and cut down on the scanner's thread, and what
        is thrown away is freed there too: the loop never holds a huge reply."""
        owner = tracked.service.owner

        async def get_items(bus: MessageBus) -> tuple[int, Mapping[str, Any]]:
            reply = await self._call(owner, "/", BUSITEM, "GetItems", bus=bus)
            if reply.signature != "a{sa{sv}}":
                raise CallFailed(f"GetItems returned signature {reply.signature!r} "
                                 "instead of 'a{sa{sv}}'")
            items = reply.body[0]
            if len(items) <= self.max_paths:
                return len(items), items
            kept = dict(islice(self._wanted_entries(tracked, items), self.max_paths))
            if "/DeviceInstance" in items:
                kept["/DeviceInstance"] = items["/DeviceInstance"]
            return len(items), kept

        if self._scanner is None:
            return await get_items(self.bus)
        if not self._scanner.alive:
            self._log_once("", "scanner", logging.WARNING,
                           "the second connection for scans was lost: scanning on the main one")
            return await get_items(self.bus)
        try:
            return await self._scanner.run(get_items, self.call_timeout)
        except asyncio.TimeoutError:
            raise CallFailed(f"no answer to GetItems within {self.call_timeout:g} s") from None
        except ConnectionError as exc:
            raise CallFailed(f"GetItems failed: {exc}") from None

    async def _call(self, destination: str, path: str, interface: str, member: str,
                    signature: str = "", body: list[Any] | None = None, *,
                    bus: MessageBus | None = None) -> Message:
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body or [])
        return await call(bus or self.bus, msg, self.call_timeout)

    def _callback(self, callback: Callable[[RemoteService], None] | None, service: RemoteService) -> None:
        if callback is None:
            return
        try:
            callback(service)
        except Exception:
            log.exception("callback for %s failed", service.name)

    def _wanted_entries(self, tracked: _Tracked,
                        items: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
        """The entries of a GetItems reply or ItemsChanged for the wanted paths, looked up so a
        huge message costs no more than a small one; every entry for a class followed in full
        (what is stored of it is capped where it is stored)."""
        paths = tracked.paths
        if paths is None:
            return iter(items.items())
        if len(items) <= len(paths):
            return ((p, e) for p, e in items.items() if p in paths)
        return ((p, items[p]) for p in paths if p in items)

    def _too_many(self, name: str, count: int) -> None:
        self._log_once(name, "too many paths", logging.WARNING,
                       "%s lists %d paths, more than the %d kept per service: only the ones "
                       "aggbatt reads are kept, the rest is ignored (logged once)",
                       name, count, self.max_paths)

    def _complain(self, tracked: _Tracked, member: str, what: str) -> None:
        if member not in tracked.complaints:
            tracked.complaints.add(member)
            log.warning("%s sent a %s with %s; ignored (logged once)",
                        tracked.service.name, member, what)

    def _log_once(self, name: str, kind: str, level: int, fmt: str, *args: Any) -> None:
        if (name, kind) not in self._logged:
            self._logged.add((name, kind))
            log.log(level, fmt, *args)
