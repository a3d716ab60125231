"""Timed fault scenarios for a simulated bank, from TOML or built in code.

File format: an optional top-level `description` string and one `[[event]]` table per event:

    [[event]]
    at = 5.0            # seconds after the scenario starts
    pack = 2            # pack number, counted from 1 like the service names sim1, sim2, ...
    action = "drift_cell"
    cell = 3            # action arguments, see ACTIONS
    mv = 40.0

Every error in a file is reported at once, each naming the event (counted from 1) and the key.
`Scenario.run(bank, clock)` applies the events in time order (events with equal times keep their
file order); the clock is anything with `now()` and `async sleep(seconds)`, so tests drive it with
a FakeClock that advances instantly and can step the bank as simulated time passes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from aggbatt.errors import AggbattError
from aggbatt.sim.bank import SimBank
from aggbatt.sim.pack import SimPack

log = logging.getLogger(__name__)


class ScenarioError(AggbattError, ValueError):
    """A scenario that cannot be loaded or does not fit the bank; `errors` lists every problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


@dataclass(frozen=True)
class Event:
    at: float
    action: str
    pack: int | None = None
    path: str | None = None
    value: Any = None
    on: bool = True
    cell: int | None = None
    mv: float | None = None
    celsius: float | None = None
    amps: float | None = None
    number: int = 0  # position in the file, counted from 1, for error messages


def _pack(action: Callable[[SimPack, Event], Any]) -> Callable[[SimBank, Event], Awaitable[None]]:
    async def apply(bank: SimBank, event: Event) -> None:
        assert event.pack is not None
        result = action(bank.pack(event.pack), event)
        if asyncio.iscoroutine(result):
            await result

    return apply


async def _set_current(bank: SimBank, event: Event) -> None:
    assert event.amps is not None
    bank.profile = None
    bank.bank_current = event.amps


_Applier = Callable[[SimBank, Event], Awaitable[None]]
_T = TypeVar("_T")


def _given(value: _T | None) -> _T:
    """An argument the action requires: loading the scenario checked that it is there."""
    assert value is not None
    return value


@dataclass(frozen=True)
class _Action:
    apply: _Applier
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    needs_pack: bool = True


ACTIONS: Mapping[str, _Action] = {
    "freeze": _Action(_pack(lambda p, e: p.freeze(True))),
    "unfreeze": _Action(_pack(lambda p, e: p.freeze(False))),
    "vanish": _Action(_pack(lambda p, e: p.vanish())),
    "reappear": _Action(_pack(lambda p, e: p.reappear())),
    "link_lost": _Action(_pack(lambda p, e: p.link_lost(True))),
    "link_restored": _Action(_pack(lambda p, e: p.link_lost(False))),
    "invalidate": _Action(_pack(lambda p, e: p.invalidate(_given(e.path), e.on)), ("path",), ("on",)),
    "override": _Action(_pack(lambda p, e: p.set_override(_given(e.path), e.value)), ("path", "value")),
    "clear_override": _Action(_pack(lambda p, e: p.set_override(_given(e.path), None)), ("path",)),
    "block_charge": _Action(_pack(lambda p, e: p.block_charge(True))),
    "unblock_charge": _Action(_pack(lambda p, e: p.block_charge(False))),
    "block_discharge": _Action(_pack(lambda p, e: p.block_discharge(True))),
    "unblock_discharge": _Action(_pack(lambda p, e: p.block_discharge(False))),
    "drift_cell": _Action(_pack(lambda p, e: p.drift_cell(_given(e.cell), _given(e.mv))), ("cell", "mv")),
    "temperature": _Action(_pack(lambda p, e: p.set_temperature(_given(e.celsius))), ("celsius",)),
    "current": _Action(_set_current, ("amps",), needs_pack=False),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Each argument key: (check, what the check demands).
_ARGUMENTS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "path": (lambda v: isinstance(v, str) and v.startswith("/") and len(v) > 1,
             "a D-Bus path such as \"/Dc/0/Voltage\""),
    "value": (lambda v: isinstance(v, (str, int, float, bool)), "a string, number or boolean"),
    "on": (lambda v: isinstance(v, bool), "true or false"),
    "cell": (_is_count, "a cell number >= 1"),
    "mv": (_is_number, "a number of millivolts"),
    "celsius": (_is_number, "a temperature in °C"),
    "amps": (_is_number, "a current in A (+ = charging)"),
}


def _event_from(index: int, raw: Any, errors: list[str]) -> Event | None:
    where = f"event {index}"
    if not isinstance(raw, dict):
        errors.append(f"{where}: must be a table ([[event]]), got {raw!r}")
        return None
    fields: dict[str, Any] = {}
    before = len(errors)
    at = raw.get("at")
    if at is None:
        errors.append(f"{where}, key 'at': missing (seconds after the start)")
    elif not _is_number(at) or at < 0:
        errors.append(f"{where}, key 'at': must be a number >= 0, got {at!r}")
    action_name = raw.get("action")
    if not isinstance(action_name, str) or action_name not in ACTIONS:
        errors.append(f"{where}, key 'action': {'missing' if action_name is None else repr(action_name)}"
                      f" is not one of {', '.join(ACTIONS)}")
        return None
    action = ACTIONS[action_name]
    if action.needs_pack:
        pack = raw.get("pack")
        if pack is None:
            errors.append(f"{where}, key 'pack': missing; action {action_name!r} needs a pack"
                          " number >= 1")
        elif not _is_count(pack):
            errors.append(f"{where}, key 'pack': must be a pack number >= 1, got {pack!r}")
        else:
            fields["pack"] = pack
    allowed = {"at", "action", *action.required, *action.optional}
    if action.needs_pack:
        allowed.add("pack")
    for key in raw:
        if key not in allowed:
            errors.append(f"{where}, key {key!r}: not allowed for action {action_name!r}"
                          f" (allowed: {', '.join(sorted(allowed))})")
    for key in action.required + action.optional:
        if key not in raw:
            if key in action.required:
                errors.append(f"{where}, key {key!r}: missing; action {action_name!r} needs it")
            continue
        check, demand = _ARGUMENTS[key]
        if not check(raw[key]):
            errors.append(f"{where}, key {key!r}: must be {demand}, got {raw[key]!r}")
        else:
            fields[key] = float(raw[key]) if key in ("mv", "celsius", "amps") else raw[key]
    if at is None or len(errors) > before:
        return None
    return Event(at=float(at), action=action_name, number=index, **fields)


@dataclass(frozen=True)
class Scenario:
    events: tuple[Event, ...]
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "scenario") -> Scenario:
        errors: list[str] = []
        for key in data:
            if key not in ("event", "description"):
                errors.append(f"key {key!r}: unknown (allowed: description, event)")
        description = data.get("description", "")
        if not isinstance(description, str):
            errors.append(f"key 'description': must be a string, got {description!r}")
        raw_events = data.get("event")
        if not isinstance(raw_events, list) or not raw_events:
            errors.append("key 'event': no [[event]] tables")
            raw_events = []
        events = [_event_from(i, raw, errors) for i, raw in enumerate(raw_events, start=1)]
        if errors:
            raise ScenarioError(source, errors)
        ordered = sorted((e for e in events if e is not None), key=lambda e: e.at)
        return cls(tuple(ordered), description)

    @property
    def duration(self) -> float:
        return self.events[-1].at if self.events else 0.0

    def check(self, bank: SimBank) -> None:
        """Raise ScenarioError if an event names a pack or cell the bank does not have."""
        errors: list[str] = []
        for event in self.events:
            if event.pack is None:
                continue
            where = f"event {event.number} (at {event.at:g} s)"
            if event.pack > len(bank.packs):
                errors.append(f"{where}, key 'pack': {event.pack} but the bank has"
                              f" {len(bank.packs)} packs")
            elif event.cell is not None and event.cell > bank.pack(event.pack).params.cells:
                errors.append(f"{where}, key 'cell': {event.cell} but pack {event.pack} has"
                              f" {bank.pack(event.pack).params.cells} cells")
            elif event.path is not None and not bank.pack(event.pack).has_path(event.path):
                errors.append(f"{where}, key 'path': pack {event.pack} has no path {event.path!r}")
        if errors:
            raise ScenarioError("scenario", errors)

    async def run(self, bank: SimBank, clock: Clock | None = None) -> None:
        """Apply every event at its time after the call; checks the whole scenario first."""
        self.check(bank)
        clock = clock or MonotonicClock()
        start = clock.now()
        for event in self.events:
            delay = start + event.at - clock.now()
            if delay > 0:
                await clock.sleep(delay)
            log.info("scenario: %.1f s %s pack %s", event.at, event.action, event.pack)
            await apply_event(bank, event)


async def apply_event(bank: SimBank, event: Event) -> None:
    await ACTIONS[event.action].apply(bank, event)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError names every bad event and key."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ScenarioError(source, [f"cannot read: {exc.strerror or exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(source, [f"not valid TOML: {exc}"]) from exc
    return Scenario.from_dict(data, source)


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Real time from the event loop."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Time that passes only when slept through; `on_advance(dt)` runs for every slice of at most
    `max_step` seconds (e.g. SimBank.step, to simulate the bank while the scenario waits)."""

    def __init__(self, start: float = 0.0, *, on_advance: Callable[[float], None] | None = None,
                 max_step: float = 1.0) -> None:
        self.time = start
        self.on_advance = on_advance
        self.max_step = max_step

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        remaining = seconds
        while remaining > 1e-12:
            dt = min(self.max_step, remaining)
            if self.on_advance is not None:
                self.on_advance(dt)
            self.time += dt
            remaining -= dt

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)
