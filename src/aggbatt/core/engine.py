"""One tick: the battery services as the monitor sees them -> what the aggregate publishes.

Pure: no D-Bus, no files, no clock of its own (`now` is monotonic seconds from the caller, `wall`
the wall-clock time that calendar rules of a strategy need).

Theory of operation, per tick:
1. packs.PackDirectory picks the pack services and gives each a stable id.
2. validation.validate turns raw values into typed ones; garbage is reported once per pack and path.
   Per service the last result is kept, keyed by service name and appearance time, so only the
   values whose change stamp moved are parsed again (validation.revalidate); a service that left and
   came back starts afresh.
3. Every known pack (persisted ids plus every pack seen) goes through its online/offline tracker
   (freshness.py): gone, link lost, invalid V/I/limits, or proven frozen -> offline; re-admitted after
   `readmit_after` s of healthy data. Known packs that are missing count as offline. The quiet
   packs are judged against the bank current the configured source measured at the last tick.
   A block flag or blocking count of a pack that turns missing (invalid, garbage) keeps the
   pack's last blocking value until a valid value lifts it.
   Each pack's last snapshot with fresh, valid data is kept, with any block or lower limit that
   its data showed since while it was not healthy added (that data is the newest information, so
   it must outlive the pack leaving the bus): while the pack is not online it is
   passed to the strategies as `TickContext.held` (with any block or lower limit of its present
   data added), so its blocks and limits keep bounding CCL, DCL and CVL until fresh data from it
   replaces them or the pack is forgotten. The blocks (not the limits, which change too often to
   be saved) also survive a restart: `TickResult.blocks` is saved by the daemon and given back to
   the next engine, so a pack that blocked and is missing after a restart still blocks.
4. aggregate.aggregate computes the bank values of the online packs; the strategies add current,
   SoC and limits; strategies.charge.apply_envelope keeps the limits inside the per-pack-share and
   blocking envelope whatever the strategy returned. The packs' last measured shares of the bank
   current (strategies.charge.ShareMemory) go into the context for the ticks without current.
5. The result carries every dynamic path (None = invalid; the publisher sends only changes), the
   events for decisions that changed this tick (typed objects from core/events.py, each with its
   log level and line), the known packs to persist, and one status per pack for `aggbatt status`
   and the demo.

Event policy (one event, one log line): when a pack goes online or offline (with the reason), when
what a pack that is not online still imposes changes, when a pack is found to share its id, is
forgotten, sends garbage on a path (once per pack and path for the life of the engine), when the
kind of rule that sets CCL or DCL changes (blocked by a pack, on_pack_lost, share, no pack), and when
ticks fail or recover. Which pack sets a share limit is not logged on every switch: two similar
packs can alternate every second; /Info/ChargeLimitation shows it.

`fail_safe` is what the daemon publishes when `tick` raised: CCL 0, DCL per
`safety.on_internal_error` (0 whenever a pack blocks discharging, by AllowToDischarge 0, DCL 0 or
its blocking count, in its present or its last fresh data), CVL no higher than the lowest pack CVL
and the present bank voltage, and neither DCL nor CVL above what the last good tick published;
/Alarms/InternalFailure 2. It is built from the raw readings and the packs' last fresh snapshots
with nothing but guarded arithmetic and never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, overload

from aggbatt.core.aggregate import (
    MODULES_OFFLINE,
    STOCK_PAGE_PATHS,
    VOLTAGES_DIFF,
    aggregate,
    cell_voltage_values,
)
from aggbatt.core.events import (
    Event,
    KnownPacksForgotten,
    LimitSourceChanged,
    PackBackOnline,
    PackHolds,
    PackNoLongerKnown,
    PackOnline,
    PackWentOffline,
    TickFailed,
    TicksRecovered,
    ValueIgnored,
)
from aggbatt.core.freshness import (
    PackState,
    PackTracker,
    data_age,
    expected_current,
    fault_of,
    stale_verdict,
)
from aggbatt.core.pack_paths import (
    ALARM_PATHS,
    ALLOW_BALANCE,
    ALLOW_CHARGE,
    ALLOW_DISCHARGE,
    BALANCING,
    BATTERY_LOW_VOLTAGE,
    BLOCKING_CHARGE,
    BLOCKING_DISCHARGE,
    CAPACITY,
    CCL,
    CELLS_PER_BATTERY,
    CHARGE_MODE,
    CONSUMED_AH,
    CURRENT,
    CVL,
    DCL,
    INSTALLED_CAPACITY,
    INTERNAL_FAILURE,
    MAX_CELL_TEMPERATURE,
    MAX_CELL_VOLTAGE,
    MAX_TEMPERATURE_CELL_ID,
    MAX_VOLTAGE_CELL_ID,
    MIN_CELL_TEMPERATURE,
    MIN_CELL_VOLTAGE,
    MIN_TEMPERATURE_CELL_ID,
    MIN_VOLTAGE_CELL_ID,
    MODULES_ONLINE,
    POWER,
    SAFETY_PATHS,
    SOC,
    TEMPERATURE,
    VOLTAGE,
    VOLTAGES_SUM,
    needs_urgent_tick,
)
from aggbatt.core.packs import MAX_KNOWN_PACKS, PackDirectory, PackRules
from aggbatt.core.pages import PackPages
from aggbatt.core.snapshot import PackSnapshot, ServiceReading
from aggbatt.core.strategies import OfflinePack, Strategies, TickContext, build_strategies
from aggbatt.core.strategies.charge import ShareMemory, apply_envelope, measurable_current
from aggbatt.core.strategies.victron_current import block_limits
from aggbatt.core.validation import PACK_PATHS, Validated, pack_paths, revalidate, validate

__all__ = [
    "DYNAMIC_PATHS", "PACK_PATHS", "SAFETY_PATHS", "Engine", "PackStatus", "ServiceReading",
    "TickResult", "needs_urgent_tick", "pack_paths",
]

TIME_TO_GO = "/TimeToGo"
CHARGE_LIMITATION = "/Info/ChargeLimitation"
DISCHARGE_LIMITATION = "/Info/DischargeLimitation"

# Every path a tick sets (cell voltage paths come on top when discovery.cell_voltages is on).
DYNAMIC_PATHS: tuple[str, ...] = (
    VOLTAGE, CURRENT, POWER, TEMPERATURE, SOC, CAPACITY, INSTALLED_CAPACITY, CONSUMED_AH,
    TIME_TO_GO, CVL, CCL, DCL, BATTERY_LOW_VOLTAGE, CHARGE_MODE, CHARGE_LIMITATION,
    DISCHARGE_LIMITATION, ALLOW_CHARGE, ALLOW_DISCHARGE, ALLOW_BALANCE, BALANCING,
    MIN_CELL_VOLTAGE, MAX_CELL_VOLTAGE, MIN_VOLTAGE_CELL_ID, MAX_VOLTAGE_CELL_ID,
    MIN_CELL_TEMPERATURE, MAX_CELL_TEMPERATURE, MIN_TEMPERATURE_CELL_ID, MAX_TEMPERATURE_CELL_ID,
    CELLS_PER_BATTERY, MODULES_ONLINE, MODULES_OFFLINE, BLOCKING_CHARGE, BLOCKING_DISCHARGE,
    VOLTAGES_SUM, VOLTAGES_DIFF, *ALARM_PATHS, *STOCK_PAGE_PATHS,
)


@dataclass(frozen=True)
class PackStatus:
    id: str
    name: str
    service: str | None  # None while the pack is missing
    state: str  # PackState value: online / offline / readmitting
    online: bool
    reason: str | None  # why not online
    age: float | None  # s since its values last changed
    voltage: float | None = None
    current: float | None = None
    soc: float | None = None
    cvl: float | None = None
    ccl: float | None = None
    dcl: float | None = None
    blocking_charge: str | None = None  # why the pack forbids charging, None when it does not
    blocking_discharge: str | None = None
    holds: str | None = None  # what its last fresh data still imposes while it is not online


@dataclass(frozen=True)
class TickResult:
    values: Mapping[str, Any]
    events: Sequence[Event]
    known_packs: frozenset[str]
    packs: Sequence[PackStatus]
    # Known pack id -> the directions ("charge", "discharge") its last fresh data blocks, to be
    # saved so a restart keeps the block of a pack that is missing then; None = unknown, keep the
    # saved ones.
    blocks: Mapping[str, tuple[str, ...]] | None = None


def _blocked_directions(pack: PackSnapshot) -> tuple[str, ...]:
    return tuple(name for name, why in (("charge", pack.charge_block()),
                                        ("discharge", pack.discharge_block())) if why is not None)


def _restored(pack_id: str, directions: Any) -> PackSnapshot | None:
    """A pack's saved block as a snapshot that blocks those directions and says nothing else."""
    if not isinstance(directions, (list, tuple)):
        return None
    charge, discharge = "charge" in directions, "discharge" in directions
    if not (charge or discharge):
        return None
    return PackSnapshot(id=pack_id, name=pack_id, service="",
                        ccl=0.0 if charge else None, allow_charge=0 if charge else None,
                        dcl=0.0 if discharge else None, allow_discharge=0 if discharge else None)


@dataclass(frozen=True)
class _Seen:
    snapshot: PackSnapshot
    reading: ServiceReading


def _capacity_share(pack: PackSnapshot, capacities: Mapping[str, float | None]) -> float:
    """The pack's capacity share of the bank made of the online packs and itself."""
    caps = {**capacities, pack.id: pack.installed_capacity}
    total = sum(c for c in caps.values() if c is not None)
    if pack.installed_capacity is None or None in caps.values() or not total > 0.0:
        return 1.0 / len(caps)
    return pack.installed_capacity / total


def _lower(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


@overload
def _stricter(fresh: PackSnapshot | None, now: PackSnapshot) -> PackSnapshot: ...
@overload
def _stricter(fresh: PackSnapshot | None, now: PackSnapshot | None) -> PackSnapshot | None: ...
def _stricter(fresh: PackSnapshot | None, now: PackSnapshot | None) -> PackSnapshot | None:
    """The last fresh snapshot with any block or lower limit of the present data added: losing
    information may keep or lower a limit, never raise it."""
    if fresh is None or now is None:
        return fresh if now is None else now
    blocking_charge = max(fresh.blocking_charge or 0, now.blocking_charge or 0)
    blocking_discharge = max(fresh.blocking_discharge or 0, now.blocking_discharge or 0)
    return replace(
        fresh, cvl=_lower(fresh.cvl, now.cvl), ccl=_lower(fresh.ccl, now.ccl),
        dcl=_lower(fresh.dcl, now.dcl),
        allow_charge=_lower(fresh.allow_charge, now.allow_charge),
        allow_discharge=_lower(fresh.allow_discharge, now.allow_discharge),
        blocking_charge=blocking_charge or fresh.blocking_charge,
        blocking_discharge=blocking_discharge or fresh.blocking_discharge,
    )


_BLOCKING_FLAGS: tuple[tuple[str, Callable[[float], bool]], ...] = (
    ("allow_charge", lambda v: v == 0), ("allow_discharge", lambda v: v == 0),
    ("blocking_charge", lambda v: v > 0), ("blocking_discharge", lambda v: v > 0))


def _keep_blocking_flags(snapshot: PackSnapshot, last: PackSnapshot | None) -> PackSnapshot:
    """A flag or blocking count that turned missing (invalid, garbage) says nothing: if the pack's
    last data blocked with it, that block stands until a valid value lifts it."""
    if last is None:
        return snapshot
    kept = {attr: getattr(last, attr) for attr, blocks in _BLOCKING_FLAGS
            if getattr(snapshot, attr) is None and getattr(last, attr) is not None
            and blocks(getattr(last, attr))}
    return replace(snapshot, **kept) if kept else snapshot


def _imposes(pack: PackSnapshot) -> str:
    """What a held snapshot imposes on the bank, for the log and `aggbatt status`."""
    def one(block: str | None, label: str, limit: float | None) -> str:
        if block is not None:
            return f"{label} 0" if block == f"{label} 0" else f"{label} 0: {block}"
        return f"{label} {limit:g} A" if limit is not None else f"{label} unknown"
    parts = [one(pack.charge_block(), "CCL", pack.ccl), one(pack.discharge_block(), "DCL", pack.dcl)]
    if pack.cvl is not None:
        parts.append(f"CVL {pack.cvl:g} V")
    return ", ".join(parts)


def _add_held_blocks(values: dict[str, Any], held: Sequence[PackSnapshot]) -> None:
    """Count the blocks of packs that are not online like those of online packs."""
    for path, allow, block in ((BLOCKING_CHARGE, ALLOW_CHARGE, PackSnapshot.charge_block),
                               (BLOCKING_DISCHARGE, ALLOW_DISCHARGE, PackSnapshot.discharge_block)):
        blocking = sum(1 for pack in held if block(pack) is not None)
        if blocking:
            values[path] = (values[path] or 0) + blocking
            values[allow] = 0


class Engine:
    def __init__(self, config: Any, known_packs: Iterable[str] = (), *,
                 strategies: Strategies | None = None,
                 blocks: Mapping[str, Any] | None = None) -> None:
        """`blocks`: the saved `TickResult.blocks` of the last run (restored for known packs)."""
        self.config = config
        self.strategies = strategies if strategies is not None else build_strategies(config)
        known = {k for k in known_packs if isinstance(k, str) and k}
        self._directory = PackDirectory(PackRules.from_config(config), known)
        self._known: set[str] = {k for k in known if not self._directory.is_excluded_id(k)}
        self._trackers: dict[str, PackTracker] = {}
        self._present_ids: frozenset[str] = frozenset()
        self._names: dict[str, str] = {}
        self._seen_ids: set[str] = set()
        self._last_seen: dict[str, float] = {}  # pack id -> last tick it was on the bus
        self._reported: set[tuple[str, str]] = set()
        self._sources: dict[str, str] = {}
        self._cell_paths: set[str] = set()
        self._parsed: dict[str, tuple[Any, Validated]] = {}  # service -> (appeared_at, last result)
        self._failing = False
        self._shares = ShareMemory()
        # Each pack's last snapshot with fresh, valid data (made stricter by what it showed while
        # not healthy): while the pack is not online it keeps capping the limits and holding its
        # blocks (`_held`), until fresh data replaces it or the pack is forgotten.
        self._fresh: dict[str, PackSnapshot] = {}
        self._holding: dict[str, str] = {}  # pack id -> what its held data imposes, as logged
        self._source_current: float | None = None  # the bank current measured at the last tick
        # CVL/CCL/DCL of the last tick that succeeded: a failed tick never publishes more.
        self._last_good: dict[str, float | None] = {}
        for pack_id, directions in (blocks.items() if isinstance(blocks, Mapping) else ()):
            restored = _restored(pack_id, directions) if pack_id in self._known else None
            if restored is not None:
                self._fresh[pack_id] = restored
        self._pages = PackPages()

    # ---- the tick -------------------------------------------------------------------------

    def reconfigure(self, config: Any, strategies: Strategies) -> None:
        """A config reload: the next tick runs with `config` and `strategies`; what the engine
        tracks of the packs (online states, readmission timers, known ids) is kept."""
        self.config = config
        self.strategies = strategies

    def tick(self, now: float, services: Sequence[ServiceReading],
             wall: float | datetime | None = None,
             settings: Mapping[str, Any] | None = None) -> TickResult:
        """`now`: monotonic seconds; `wall`: wall-clock time for calendar rules (own charge);
        `settings`: the localsettings values the strategies read (TickContext.settings)."""
        cfg = self.config
        events: list[Event] = []
        present = self._identify(now, services, events)
        self._present_ids = frozenset(present)
        self._forget_disallowed(events)
        trackers = self._judge(now, present, events)

        online = [present[i].snapshot for i in sorted(trackers) if trackers[i].online]
        offline = [OfflinePack(i, self._names.get(i, i), trackers[i].reason or "")
                   for i in sorted(trackers) if not trackers[i].online]
        held = self._held(present, trackers, events)
        shares = self._shares.update(now, online, measurable_current(cfg))
        ctx = TickContext(now=now, config=cfg, online=tuple(online), offline=tuple(offline),
                          services=tuple(services), wall=wall, held=tuple(held), shares=shares,
                          settings=dict(settings or {}))
        current = self.strategies.current.measure(ctx)
        self._source_current = current.current
        soc = self.strategies.soc.estimate(ctx, current)
        limits = apply_envelope(self.strategies.charge.limits(ctx, current), ctx)
        if current.block:
            limits = block_limits(limits)

        values: dict[str, Any] = dict.fromkeys(DYNAMIC_PATHS)
        values.update(aggregate(online, len(offline), cfg.discovery.expected_packs,
                                cfg.aggregation.temperature))
        _add_held_blocks(values, held)
        values.update({
            CURRENT: current.current, POWER: current.power,
            SOC: soc.soc, CAPACITY: soc.capacity, CONSUMED_AH: soc.consumed_ah,
            TIME_TO_GO: soc.time_to_go,
            CVL: limits.cvl, CCL: limits.ccl, DCL: limits.dcl,
            CHARGE_LIMITATION: limits.charge_reason, DISCHARGE_LIMITATION: limits.discharge_reason,
        })
        if cfg.discovery.cell_voltages:
            cells = cell_voltage_values(online)
            self._cell_paths.update(cells)
            values.update(dict.fromkeys(self._cell_paths))
            values.update(cells)
        for result in (current, soc, limits):
            values.update(result.values)
            events.extend(result.events)
        self._source_events(limits.charge_source, limits.charge_reason, "charge", events)
        self._source_events(limits.discharge_source, limits.discharge_reason, "discharge", events)
        if self._failing:
            self._failing = False
            events.append(TicksRecovered())
        self._last_good = {CVL: limits.cvl, CCL: limits.ccl, DCL: limits.dcl}
        statuses = self._statuses(now, present, trackers)
        values.update(self._pages.values(statuses, now))
        return TickResult(values, events, frozenset(self._known), statuses, self._blocks())

    def _identify(self, now: float, services: Sequence[ServiceReading],
                  events: list[Event]) -> dict[str, _Seen]:
        packs, dup_events = self._directory.identify(services, now, self._known)
        events.extend(dup_events)
        for pack in packs:
            if pack.renamed_from is not None:
                self._rename(pack.renamed_from, pack.id)
        present: dict[str, _Seen] = {}
        cells = bool(self.config.discovery.cell_voltages)
        parsed: dict[str, tuple[Any, Validated]] = {}
        for pack in packs:
            reading = pack.reading
            cached = self._parsed.get(reading.service)
            previous = cached[1] if cached is not None and cached[0] == reading.appeared_at else None
            checked = revalidate(previous, reading.values, reading.changed_at, cells)
            parsed[reading.service] = (reading.appeared_at, checked)
            for path, problem in sorted(checked.problems.items()):
                if (pack.id, path) not in self._reported:
                    self._reported.add((pack.id, path))
                    events.append(ValueIgnored(pack.name, path, problem))
            snapshot = _keep_blocking_flags(
                PackSnapshot.build(pack.id, pack.name, pack.reading.service, checked.values),
                self._fresh.get(pack.id))
            present[pack.id] = _Seen(snapshot, pack.reading)
            self._known.add(pack.id)
            self._names[pack.id] = pack.name
            self._last_seen[pack.id] = now
        self._parsed = parsed
        self._bound_known(present, events)
        return present

    def _bound_known(self, present: Mapping[str, _Seen], events: list[Event]) -> None:
        """Keep at most MAX_KNOWN_PACKS known packs: past that, the packs missing longest go.
        A driver that comes back under a new serial again and again would otherwise add a pack
        that counts offline every time, and make the state file grow without end."""
        excess = len(self._known) - MAX_KNOWN_PACKS
        if excess <= 0:
            return
        missing = sorted((i for i in self._known if i not in present),
                         key=lambda i: (self._last_seen.get(i, float("-inf")), i))[:excess]
        for pack_id in missing:
            self._drop_known(pack_id)
        if missing:
            events.append(KnownPacksForgotten(MAX_KNOWN_PACKS, tuple(missing)))

    def _drop_known(self, pack_id: str) -> None:
        self._known.discard(pack_id)
        self._trackers.pop(pack_id, None)
        self._fresh.pop(pack_id, None)
        self._holding.pop(pack_id, None)
        self._last_seen.pop(pack_id, None)
        self._seen_ids.discard(pack_id)

    def _rename(self, old: str, new: str) -> None:
        """The same service now has another id: one pack, so its state moves with it and the old
        id leaves the known packs instead of counting offline forever."""
        self._known.discard(old)
        self._last_seen.pop(old, None)
        tracker = self._trackers.pop(old, None)
        if tracker is not None:
            tracker.id = new
            self._trackers[new] = tracker
        if old in self._seen_ids:
            self._seen_ids.discard(old)
            self._seen_ids.add(new)
        self._names.pop(old, None)
        fresh = self._fresh.pop(old, None)
        if fresh is not None:
            self._fresh[new] = replace(fresh, id=new)
        self._holding.pop(old, None)

    def forget_missing(self) -> list[str]:
        """Forget the known packs not on the bus at the last tick (a pack removed for good would
        otherwise count offline and hold /Alarms/BmsCable at 1 forever); returns their names."""
        gone = sorted(self._known - self._present_ids)
        for pack_id in gone:
            self._drop_known(pack_id)
        return [self._names.get(pack_id, pack_id) for pack_id in gone]

    def _forget_disallowed(self, events: list[Event]) -> None:
        for pack_id in sorted(self._known):
            if self._directory.is_excluded_id(pack_id):
                self._known.discard(pack_id)
                self._trackers.pop(pack_id, None)
                self._fresh.pop(pack_id, None)
                self._holding.pop(pack_id, None)
                events.append(PackNoLongerKnown(self._names.get(pack_id, pack_id)))

    def _judge(self, now: float, present: Mapping[str, _Seen],
               events: list[Event]) -> dict[str, PackTracker]:
        fresh = self.config.freshness
        online_now = [present[i].snapshot for i in present
                      if i in self._trackers and self._trackers[i].online]
        # The bank current that tells a quiet pack from a frozen one: the configured source (last
        # tick's measurement: this tick's needs the online packs decided here), else the packs.
        bank_current = self._source_current
        if bank_current is None:
            currents = [p.current for p in online_now if p.current is not None]
            bank_current = sum(currents) if currents else None
        capacities = {p.id: p.installed_capacity for p in online_now}
        for pack_id in sorted(self._known):
            tracker = self._trackers.setdefault(pack_id, PackTracker(pack_id))
            seen = present.get(pack_id)
            snapshot = seen.snapshot if seen else None
            age = data_age(now, seen.reading.last_change, seen.reading.appeared_at) if seen else None
            fault = fault_of(snapshot, age, pack_id in self._seen_ids)
            if fault is None and seen is not None and snapshot is not None and age is not None:
                stamp = now - age
                evidence = expected_current(snapshot, bank_current,
                                            _capacity_share(snapshot, capacities),
                                            fresh.idle_current)
                fault = tracker.staleness(stale_verdict(
                    snapshot, age, tracker.evidence_for(now, evidence, stamp), evidence,
                    seen.reading.unresponsive, fresh.stale_after, fresh.idle_current), stamp)
            before = tracker.update(now, fault, fresh.readmit_after)
            if snapshot is not None:
                # data of a pack that is present but not healthy may add a block or lower a limit
                # of what it holds, never lift one: dropping it when the pack then leaves would
                # raise the limits
                self._fresh[pack_id] = (snapshot if fault is None
                                        else _stricter(self._fresh.get(pack_id), snapshot))
            name = self._names.get(pack_id, pack_id)
            if tracker.state is PackState.ONLINE and before is not PackState.ONLINE:
                service = seen.reading.service if seen else None
                if before is PackState.NEW:
                    events.append(PackOnline(name, service))
                else:
                    events.append(PackBackOnline(name, fresh.readmit_after, service))
            elif tracker.state is PackState.OFFLINE and before in (PackState.NEW, PackState.ONLINE):
                events.append(PackWentOffline(name, tracker.reason))
            if seen:
                self._seen_ids.add(pack_id)
        return {i: self._trackers[i] for i in self._known}

    def _held(self, present: Mapping[str, _Seen], trackers: Mapping[str, PackTracker],
              events: list[Event]) -> list[PackSnapshot]:
        """What each pack that is not online still imposes: its last fresh data, made stricter by
        any block or lower limit its present data shows (logged when that changes)."""
        held: list[PackSnapshot] = []
        for pack_id in sorted(trackers):
            if trackers[pack_id].online:
                self._holding.pop(pack_id, None)
                continue
            seen = present.get(pack_id)
            snapshot = _stricter(self._fresh.get(pack_id), seen.snapshot if seen else None)
            if snapshot is None:
                continue
            held.append(snapshot)
            what = _imposes(snapshot)
            if self._holding.get(pack_id) != what:
                self._holding[pack_id] = what
                events.append(PackHolds(self._names.get(pack_id, pack_id), what))
        return held

    def _blocks(self) -> dict[str, tuple[str, ...]]:
        return {pack_id: directions for pack_id in sorted(self._known)
                if pack_id in self._fresh and (directions := _blocked_directions(self._fresh[pack_id]))}

    def _source_events(self, source: str, reason: str | None, which: str, events: list[Event]) -> None:
        if self._sources.get(which) != source:
            self._sources[which] = source
            events.append(LimitSourceChanged(which, reason))

    def _statuses(self, now: float, present: Mapping[str, _Seen],
                  trackers: Mapping[str, PackTracker]) -> list[PackStatus]:
        out = []
        for pack_id in sorted(trackers):
            tracker = trackers[pack_id]
            seen = present.get(pack_id)
            snap = seen.snapshot if seen else None
            out.append(PackStatus(
                id=pack_id, name=self._names.get(pack_id, pack_id),
                service=seen.reading.service if seen else None,
                state=tracker.state.value, online=tracker.online, reason=tracker.reason,
                age=data_age(now, seen.reading.last_change, seen.reading.appeared_at) if seen else None,
                voltage=snap.voltage if snap else None, current=snap.current if snap else None,
                soc=snap.soc if snap else None, cvl=snap.cvl if snap else None,
                ccl=snap.ccl if snap else None, dcl=snap.dcl if snap else None,
                blocking_charge=snap.charge_block() if snap else None,
                blocking_discharge=snap.discharge_block() if snap else None,
                holds=self._holding.get(pack_id),
            ))
        return out

    # ---- fail-safe ------------------------------------------------------------------------

    def fail_safe(self, now: float, services: Sequence[ServiceReading],
                  error: BaseException) -> TickResult:
        """Safe limits after `tick` raised (module header). Never raises."""
        try:
            return self._fail_safe(services, error)
        except Exception:  # noqa: BLE001 - the last line of defence must not fail
            # Keep the known packs (an empty set would be saved and forget them, lifting
            # on_pack_lost) and the last good CVL (an invalid CVL deselects the BMS).
            last_cvl = self._last_good.get(CVL)
            values: dict[str, Any] = dict.fromkeys(DYNAMIC_PATHS)
            values.update({CCL: 0.0, DCL: 0.0, INTERNAL_FAILURE: 2,
                           CVL: last_cvl if isinstance(last_cvl, float) else None,
                           CHARGE_LIMITATION: "internal error", DISCHARGE_LIMITATION: "internal error"})
            return TickResult(values, (), frozenset(self._known), ())

    def _fail_safe(self, services: Sequence[ServiceReading], error: BaseException) -> TickResult:
        snapshots: list[PackSnapshot] = []
        try:
            packs, _ = self._directory.identify(services)
        except Exception:  # noqa: BLE001
            packs = []
        for pack in packs:
            try:
                checked = validate(pack.reading.values)
                snapshots.append(PackSnapshot.build(pack.id, pack.name, pack.reading.service,
                                                    checked.values))
            except Exception:  # noqa: BLE001
                continue
        voltages = [s.voltage for s in snapshots if s.voltage is not None]
        currents = [s.current for s in snapshots if s.current is not None]
        # The packs' last fresh data counts as in a good tick: a pack that is quiet or gone now
        # may still block discharging or have the lowest limits.
        present_ids = {s.id for s in snapshots}
        limiting = snapshots + [s for i, s in self._fresh.items() if i not in present_ids]
        cvls = [s.cvl for s in limiting if s.cvl is not None]
        dcls = [s.dcl for s in limiting if s.dcl is not None]
        blocked = next((f"{s.name} blocks discharging ({why})" for s in limiting
                        if (why := s.discharge_block()) is not None), None)
        min_pack = self.config.safety.on_internal_error == "dcl_min_pack"
        dcl = min(dcls) if (min_pack and dcls and blocked is None) else 0.0
        cvl = min(min(cvls), min(voltages)) if (cvls and voltages) else None
        # Never more than the last good tick published.
        last_dcl, last_cvl = self._last_good.get(DCL), self._last_good.get(CVL)
        if isinstance(last_dcl, (int, float)) and last_dcl < dcl:
            dcl = float(last_dcl)
        if isinstance(last_cvl, (int, float)) and cvl is not None and last_cvl < cvl:
            cvl = float(last_cvl)
        if dcl > 0.0:
            why_dcl = "internal error: smallest pack DCL or less"
        elif blocked is not None:
            why_dcl = f"internal error: discharging stopped, {blocked}"
        else:
            why_dcl = "internal error: discharging stopped"
        values: dict[str, Any] = dict.fromkeys(DYNAMIC_PATHS)
        values.update({
            VOLTAGE: sum(voltages) / len(voltages) if voltages else None,
            CURRENT: sum(currents) if currents else None,
            CVL: cvl, CCL: 0.0, DCL: dcl,
            CHARGE_LIMITATION: "internal error: charging stopped",
            DISCHARGE_LIMITATION: why_dcl,
            INTERNAL_FAILURE: 2,
        })
        for path in self._cell_paths:
            values[path] = None
        values.update(self._pages.cleared())
        events: list[Event] = []
        if not self._failing:
            self._failing = True
            events.append(TickFailed(type(error).__name__, dcl))
        self._sources.clear()
        return TickResult(values, events, frozenset(self._known), ())
