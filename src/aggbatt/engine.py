"""One tick: the battery services as the monitor sees them -> what the aggregate publishes.

Pure: no D-Bus, no files, no clock of its own (`now` is monotonic seconds from the caller, `wall`
the wall-clock time that calendar rules of a strategy need).

Theory of operation, per tick:
1. packs.PackDirectory picks the pack services and gives each a stable id.
2. model.validate turns raw values into typed ones; garbage is reported once per pack and path.
   Per service the last result is kept, keyed by service name and appearance time, so only the
   values whose change stamp moved are parsed again (model.revalidate); a service that left and
   came back starts afresh.
3. Every known pack (persisted ids plus every pack seen) goes through its online/offline tracker
   (model.py): gone, link lost, invalid V/I/limits, or stale -> offline; re-admitted after
   `readmit_after` s of healthy data. Known packs that are missing count as offline.
4. aggregate.aggregate computes the bank values of the online packs; the strategies add current,
   SoC and limits; strategies.charge.apply_envelope keeps the limits inside the per-pack-share and
   blocking envelope whatever the strategy returned.
5. The result carries every dynamic path (None = invalid; the publisher sends only changes), the
   events (log lines) for decisions that changed this tick, the known packs to persist, and one
   status per pack for `aggbatt status` and the demo.

Event policy: a line when a pack goes online or offline (with the reason), is found to share its id,
is forgotten, sends garbage on a path (once per pack and path for the life of the engine), when the
kind of rule that sets CCL or DCL changes (blocked by a pack, on_pack_lost, share, no pack), and when
ticks fail or recover. Which pack sets a share limit is not logged on every switch: two similar
packs can alternate every second; /Info/ChargeLimitation shows it.

`fail_safe` is what the daemon publishes when `tick` raised: CCL 0, DCL per
`safety.on_internal_error`, CVL no higher than the lowest pack CVL and the present bank voltage,
/Alarms/InternalFailure 2. It is built from the raw readings with nothing but guarded arithmetic
and never raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aggbatt.aggregate import (
    MODULES_OFFLINE, STOCK_PAGE_PATHS, VOLTAGES_DIFF, aggregate, cell_voltage_values,
)
from aggbatt.model import (
    ALARM_PATHS, ALLOW_BALANCE, ALLOW_CHARGE, ALLOW_DISCHARGE, BALANCING, BATTERY_LOW_VOLTAGE,
    BLOCKING_CHARGE, BLOCKING_DISCHARGE, CAPACITY, CCL, CELLS_PER_BATTERY, CHARGE_MODE,
    CONSUMED_AH, CURRENT, CVL, DCL, INSTALLED_CAPACITY, INTERNAL_FAILURE, MAX_CELL_TEMPERATURE,
    MAX_CELL_VOLTAGE, MAX_TEMPERATURE_CELL_ID, MAX_VOLTAGE_CELL_ID, MIN_CELL_TEMPERATURE,
    MIN_CELL_VOLTAGE, MIN_TEMPERATURE_CELL_ID, MIN_VOLTAGE_CELL_ID, MODULES_ONLINE, PACK_PATHS,
    POWER, SAFETY_PATHS, SOC, TEMPERATURE, VOLTAGE, VOLTAGES_SUM, PackSnapshot, PackState,
    PackTracker, ServiceReading, Validated, data_age, fault_of, needs_urgent_tick, pack_paths,
    revalidate, stale_limit, validate,
)
from aggbatt.packs import MAX_KNOWN_PACKS, PackDirectory, PackRules
from aggbatt.pages import PackPages
from aggbatt.strategies import OfflinePack, Strategies, TickContext, build_strategies
from aggbatt.strategies.charge import apply_envelope
from aggbatt.strategies.victron_current import block_limits

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


@dataclass(frozen=True)
class TickResult:
    values: Mapping[str, Any]
    events: Sequence[str]
    known_packs: frozenset[str]
    packs: Sequence[PackStatus]


@dataclass(frozen=True)
class _Seen:
    snapshot: PackSnapshot
    reading: ServiceReading


class Engine:
    def __init__(self, config: Any, known_packs: Iterable[str] = (), *,
                 strategies: Strategies | None = None) -> None:
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
        self._pages = PackPages()

    # ---- the tick -------------------------------------------------------------------------

    def tick(self, now: float, services: Sequence[ServiceReading],
             wall: float | datetime | None = None) -> TickResult:
        """`now`: monotonic seconds; `wall`: wall-clock time for calendar rules (own charge)."""
        cfg = self.config
        events: list[str] = []
        present = self._identify(now, services, events)
        self._present_ids = frozenset(present)
        self._forget_disallowed(events)
        trackers = self._judge(now, present, events)

        online = [present[i].snapshot for i in sorted(trackers) if trackers[i].online]
        offline = [OfflinePack(i, self._names.get(i, i), trackers[i].reason or "")
                   for i in sorted(trackers) if not trackers[i].online]
        ctx = TickContext(now=now, config=cfg, online=tuple(online), offline=tuple(offline),
                          services=tuple(services), wall=wall)
        current = self.strategies.current.measure(ctx)
        soc = self.strategies.soc.estimate(ctx, current)
        limits = apply_envelope(self.strategies.charge.limits(ctx, current), ctx)
        if current.block:
            limits = block_limits(limits)

        values: dict[str, Any] = dict.fromkeys(DYNAMIC_PATHS)
        values.update(aggregate(online, len(offline), cfg.discovery.expected_packs,
                                cfg.aggregation.temperature))
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
            events.append("ticks work again: limits computed normally")
        statuses = self._statuses(now, present, trackers)
        values.update(self._pages.values(statuses, now))
        return TickResult(values, events, frozenset(self._known), statuses)

    def _identify(self, now: float, services: Sequence[ServiceReading],
                  events: list[str]) -> dict[str, _Seen]:
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
                    events.append(f"{pack.name}: ignoring {path}: {problem}")
            snapshot = PackSnapshot.build(pack.id, pack.name, pack.reading.service, checked.values)
            present[pack.id] = _Seen(snapshot, pack.reading)
            self._known.add(pack.id)
            self._names[pack.id] = pack.name
            self._last_seen[pack.id] = now
        self._parsed = parsed
        self._bound_known(present, events)
        return present

    def _bound_known(self, present: Mapping[str, _Seen], events: list[str]) -> None:
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
            events.append(f"more than {MAX_KNOWN_PACKS} known packs: forgot {len(missing)} "
                          f"missing the longest ({', '.join(missing[:5])}"
                          f"{', ...' if len(missing) > 5 else ''})")

    def _drop_known(self, pack_id: str) -> None:
        self._known.discard(pack_id)
        self._trackers.pop(pack_id, None)
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

    def forget_missing(self) -> list[str]:
        """Forget the known packs not on the bus at the last tick (a pack removed for good would
        otherwise count offline and hold /Alarms/BmsCable at 1 forever); returns their names."""
        gone = sorted(self._known - self._present_ids)
        for pack_id in gone:
            self._drop_known(pack_id)
        return [self._names.get(pack_id, pack_id) for pack_id in gone]

    def _forget_disallowed(self, events: list[str]) -> None:
        for pack_id in sorted(self._known):
            if self._directory.is_excluded_id(pack_id):
                self._known.discard(pack_id)
                self._trackers.pop(pack_id, None)
                events.append(f"{self._names.get(pack_id, pack_id)}: no longer a known pack "
                              "(excluded or its id is shared by several packs)")

    def _judge(self, now: float, present: Mapping[str, _Seen],
               events: list[str]) -> dict[str, PackTracker]:
        fresh = self.config.freshness
        bank_currents = [present[i].snapshot.current for i in present
                         if i in self._trackers and self._trackers[i].online
                         and present[i].snapshot.current is not None]
        bank_current = sum(bank_currents) if bank_currents else None  # type: ignore[arg-type]
        for pack_id in sorted(self._known):
            tracker = self._trackers.setdefault(pack_id, PackTracker(pack_id))
            seen = present.get(pack_id)
            snapshot = seen.snapshot if seen else None
            age = data_age(now, seen.reading.last_change, seen.reading.appeared_at) if seen else None
            limit, flowing = stale_limit(bank_current, snapshot.current if snapshot else None,
                                         fresh.idle_current, fresh.stale_after, fresh.stale_after_idle)
            fault = fault_of(snapshot, age, limit, flowing, pack_id in self._seen_ids)
            before = tracker.update(now, fault, fresh.readmit_after)
            name = self._names.get(pack_id, pack_id)
            if tracker.state is PackState.ONLINE and before is not PackState.ONLINE:
                where = f" ({seen.reading.service})" if seen else ""
                if before is PackState.NEW:
                    events.append(f"{name}: online{where}")
                else:
                    events.append(f"{name}: back online after {fresh.readmit_after:g} s of valid "
                                  f"data{where}")
            elif tracker.state is PackState.OFFLINE and before in (PackState.NEW, PackState.ONLINE):
                events.append(f"{name}: offline: {tracker.reason}")
            if seen:
                self._seen_ids.add(pack_id)
        return {i: self._trackers[i] for i in self._known}

    def _source_events(self, source: str, reason: str | None, which: str, events: list[str]) -> None:
        if self._sources.get(which) != source:
            self._sources[which] = source
            events.append(f"{which} limit now set by: {reason}")

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
            ))
        return out

    # ---- fail-safe ------------------------------------------------------------------------

    def fail_safe(self, now: float, services: Sequence[ServiceReading],
                  error: BaseException) -> TickResult:
        """Safe limits after `tick` raised (module header). Never raises."""
        try:
            return self._fail_safe(services, error)
        except Exception:  # noqa: BLE001 - the last line of defence must not fail
            values: dict[str, Any] = dict.fromkeys(DYNAMIC_PATHS)
            values.update({CCL: 0.0, DCL: 0.0, INTERNAL_FAILURE: 2,
                           CHARGE_LIMITATION: "internal error", DISCHARGE_LIMITATION: "internal error"})
            return TickResult(values, (), frozenset(), ())

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
        cvls = [s.cvl for s in snapshots if s.cvl is not None]
        dcls = [s.dcl for s in snapshots if s.dcl is not None]
        voltages = [s.voltage for s in snapshots if s.voltage is not None]
        currents = [s.current for s in snapshots if s.current is not None]
        min_pack = self.config.safety.on_internal_error == "dcl_min_pack"
        dcl = min(dcls) if (min_pack and dcls) else 0.0
        cvl = min(min(cvls), min(voltages)) if (cvls and voltages) else None
        values: dict[str, Any] = dict.fromkeys(DYNAMIC_PATHS)
        values.update({
            VOLTAGE: sum(voltages) / len(voltages) if voltages else None,
            CURRENT: sum(currents) if currents else None,
            CVL: cvl, CCL: 0.0, DCL: dcl,
            CHARGE_LIMITATION: "internal error: charging stopped",
            DISCHARGE_LIMITATION: ("internal error: smallest pack DCL" if dcl > 0.0
                                   else "internal error: discharging stopped"),
            INTERNAL_FAILURE: 2,
        })
        for path in self._cell_paths:
            values[path] = None
        values.update(self._pages.cleared())
        events: list[str] = []
        if not self._failing:
            self._failing = True
            events.append(f"tick failed ({type(error).__name__}): publishing safe limits "
                          f"(CCL 0, DCL {dcl:g} A) until a tick succeeds")
        self._sources.clear()
        return TickResult(values, events, frozenset(self._known), ())
