"""OwnCharge: aggbatt decides CVL, CCL and DCL for the whole bank (charge.strategy = "own").

Rules (docs/reference-aggregator.md §3-§6; the reference's defects of §11 items 1-5, 8, 15 addressed):

- Per-cell settings become bank volts per pack: a pack with n cells gets n x the cell voltage, and
  the bank value is the minimum over the online packs, so packs with different cell counts in
  parallel each stay within their own per-cell limits. The cell count is /System/NrOfCellsPerBattery,
  else the number of cell voltages the pack publishes.
- A count is trusted only when it fits the pack's voltages: the pack voltage and /Voltages/Sum
  divided by the count must lie within the configured cell range (min_cell_voltage to
  max_cell_voltage, widened by CELL_RANGE_SLACK for sag and overshoot), and within the pack's own
  lowest and highest cell reading (CELL_READING_SLACK) when it publishes them. A wrong count would
  scale every per-cell limit (24 reported cells on a 16-cell pack: CVL 24 x 3.4 V = 81.6 V), so a
  count that does not fit is unknown: the pack's own CVL caps (rule 5 below), logged once.
- CVL, in order:
  1. the month's charge voltage (charge_cell_voltage[month - 1], local calendar month);
  2. balancing (balancing.py) may raise it to the balancing voltage;
  3. it never exceeds n x max_cell_voltage of any pack (the LFP preset's 3.55 V months are above its
     3.45 V max cell voltage, 3.11 item 3: those months are capped, and say so);
  4. dynamic CVL (dynamic_cvl.py) lowers it while a cell is over max_cell_voltage;
  5. a pack whose cell count is unknown cannot be held to per-cell limits; its own CVL caps the bank.
     The last trusted count of a known pack still counts while its count is unknown or it is
     offline (until it is forgotten): losing the count never raises the CVL.
  With no cell count at all the lowest pack CVL is used.
- CCL/DCL: the tables of current_tables.py, capped by the pass-through per-pack-share limit
  (strategies.charge.bound), 0 while any pack blocks. The engine applies the same envelope again.
  A known pack whose cell readings are missing or that is offline counts in the tables with the
  last highest and lowest cell it showed (a forgotten pack no longer does): losing a reading never
  raises CCL or DCL.
- /Info/ChargeMode names the rule that sets the CVL now; /Info/ChargeLimitation and
  /Info/DischargeLimitation name the rule that sets CCL and DCL.
- A due balancing starts while the bank current (the configured current source) is at least
  freshness.idle_current, or unknown.
- The balancing voltage the goal is compared with: the mean pack voltage, with the tolerance of
  balancing_tolerance x the smallest cell count; the cell difference is the largest max - min cell
  difference inside one pack (what the pack balancers can fix).
- Feed-in guard condition: dynamic CVL active, or (feedin.also_when_blocking) any pack blocks
  charging. The daemon runs the guard (feedin.py) from `feedin_wanted`/`feedin_reason`.

State: the balancing record (balancing.py) is handed over once with `load` (`restore_state`) before
the first tick and leaves through `balancing_save` whenever it changed; the daemon writes what
`state_to_save` hands it to the state dir. The DCL latch and the dynamic CVL controller are not
persisted (see their modules). The feed-in wish of each decision leaves once through `take_feedin`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from aggbatt.core.events import (
    DischargeCutOff,
    DischargeCutOffKept,
    DischargeCutOffReleased,
    DynamicCvlChanged,
    Event,
    LimitSourceChanged,
    StrategyNote,
)
from aggbatt.core.pack_paths import CHARGE_MODE
from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.strategies import ChargeLimits, CurrentResult, StateFile, TickContext
from aggbatt.core.strategies.balancing import STATE_VERSION as BALANCING_VERSION
from aggbatt.core.strategies.balancing import (
    Balancing,
    BalancingInputs,
    BalancingParams,
    BalancingRecord,
    Phase,
)
from aggbatt.core.strategies.charge import CHARGE, DISCHARGE, Bound, bound
from aggbatt.core.strategies.current_tables import (
    CurrentTables,
    Latch,
    Limit,
    Table,
    TableInputs,
    TableParams,
)
from aggbatt.core.strategies.dynamic_cvl import DynamicCvl, DynamicParams, highest_cell

BALANCING_FILE = "balancing.json"
# A pack's mean cell voltage may lie this fraction beyond the configured cell range (load sag,
# charge overshoot) before its cell count is distrusted.
CELL_RANGE_SLACK = 0.1
# V: how far the mean cell voltage may lie outside the pack's own lowest and highest cell reading
# (cable and shunt drop between the cells and the pack terminals, readings taken at other moments).
CELL_READING_SLACK = 0.05
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


@dataclass(frozen=True)
class OwnParams:
    charge_cell_voltage: tuple[float, ...]  # 12 values, V per cell
    max_cell_voltage: float
    min_cell_voltage: float
    balancing_cell_voltage: float
    balancing_tolerance: float  # V per cell
    dynamic_cvl: bool
    also_when_blocking: bool
    balancing: BalancingParams
    dynamic: DynamicParams
    tables: TableParams

    @classmethod
    def from_config(cls, config: Any) -> OwnParams:
        own = config.charge.own
        return cls(
            charge_cell_voltage=tuple(own.charge_cell_voltage),
            max_cell_voltage=own.max_cell_voltage,
            min_cell_voltage=own.min_cell_voltage,
            balancing_cell_voltage=own.balancing_cell_voltage,
            balancing_tolerance=own.balancing_tolerance,
            dynamic_cvl=own.dynamic_cvl,
            also_when_blocking=config.feedin.also_when_blocking,
            balancing=BalancingParams(own.balancing_repetition, own.cell_diff_max, own.balancing_timeout),
            dynamic=DynamicParams(own.max_cell_voltage, own.cvl_hold_time, own.cvl_recovery_rate,
                                  own.cvl_gain),
            tables=TableParams(
                max_charge_current=own.max_charge_current,
                max_discharge_current=own.max_discharge_current,
                charge=Table.of(own.cell_charge_voltages, own.cell_charge_factors),
                discharge=Table.of(own.cell_discharge_voltages, own.cell_discharge_factors),
                min_cell_voltage=own.min_cell_voltage,
                min_cell_hysteresis=own.min_cell_hysteresis,
            ),
        )


@dataclass(frozen=True)
class OwnDecision:
    cvl: float | None
    cvl_source: str  # stable key: month, balancing, max_cell, dynamic, pack_cvl, none
    charge_mode: str  # /Info/ChargeMode: the rule that sets the CVL
    ccl: Limit
    dcl: Limit
    feedin_wanted: bool
    feedin_reason: str
    events: tuple[Event, ...]
    balancing_save: Mapping[str, Any] | None  # the balancing record to persist, when it changed


def cell_count(pack: PackSnapshot) -> int | None:
    if pack.cells is not None and pack.cells > 0:
        return pack.cells
    return len(pack.cell_voltages) or None


def count_misfit(pack: PackSnapshot, cells: int, low: float, high: float) -> str | None:
    """Why `cells` cannot be the cell count of `pack` with a configured cell range of
    `low`..`high` V, or None when its voltages fit."""
    lo, hi = low * (1.0 - CELL_RANGE_SLACK), high * (1.0 + CELL_RANGE_SLACK)
    cell_low, cell_high = lowest_cell(pack), highest_cell(pack)
    for label, volts in (("pack voltage", pack.voltage), ("cell sum", pack.voltages_sum)):
        if volts is None:
            continue
        mean = volts / cells
        if not lo <= mean <= hi:
            return (f"{label} {volts:.2f} V / {cells} = {mean:.2f} V per cell, "
                    f"outside {lo:.2f}-{hi:.2f} V")
        if (cell_low is not None and cell_high is not None
                and not cell_low - CELL_READING_SLACK <= mean <= cell_high + CELL_READING_SLACK):
            return (f"{label} {volts:.2f} V / {cells} = {mean:.2f} V per cell, but its cells read "
                    f"{cell_low:.3f}-{cell_high:.3f} V")
    return None


def lowest_cell(pack: PackSnapshot) -> float | None:
    known = [u for u in pack.cell_voltages.values() if isinstance(u, float) and math.isfinite(u)]
    if pack.min_cell_voltage is not None:
        known.append(pack.min_cell_voltage)
    return min(known) if known else None


def largest_cell_diff(packs: Sequence[PackSnapshot]) -> float | None:
    diffs = []
    for pack in packs:
        high, low = highest_cell(pack), lowest_cell(pack)
        if high is not None and low is not None:
            diffs.append(high - low)
    return max(diffs) if diffs else None


def _bank(packs: Sequence[tuple[PackSnapshot, int]], per_cell: float) -> tuple[float, PackSnapshot]:
    """min over packs of n x per_cell, and the pack that sets it."""
    value, pack = min(((n * per_cell, p) for p, n in packs), key=lambda item: item[0])
    return value, pack


def local_time(ctx: TickContext) -> datetime:
    """The tick's local wall time: `ctx.wall` as a datetime or as epoch seconds."""
    wall = getattr(ctx, "wall", None)
    if isinstance(wall, datetime):
        return wall
    if isinstance(wall, (int, float)) and not isinstance(wall, bool) and math.isfinite(wall):
        return datetime.fromtimestamp(wall)
    raise ValueError("the own charge strategy needs the wall clock (TickContext.wall)")


def _charging(current: float | None, idle_current: float) -> bool:
    return current is None or current >= max(idle_current, 0.0) and current > 0.0


def _cap(limit: Bound) -> Limit:
    return Limit(math.inf if limit.cap is None else limit.cap, limit.reason, limit.source)


class OwnCharge:
    name = "own"
    state_file = StateFile(BALANCING_FILE, BALANCING_VERSION, "the balancing state", retry=True)

    def __init__(self, config: Any) -> None:
        self.params = OwnParams.from_config(config)
        self.idle_current = float(config.freshness.idle_current)
        self.tables = CurrentTables(self.params.tables)
        self.dynamic = DynamicCvl(self.params.dynamic)
        self.balancing: Balancing | None = None
        self._loaded: tuple[Mapping[str, Any] | None, str | None] = (None, None)
        self._dynamic_active = False
        self._latch = self.tables.latch
        self._latch_kept: str | None = None
        # Packs that have shown a valid lowest cell in this process, and the packs whose lowest cell
        # was inside the cut-off band while the DCL latch is cut (id -> name): their readings
        # going missing must not release the latch.
        self._read_low: set[str] = set()
        self._low_packs: dict[str, str] = {}
        # pack id -> its last valid (highest, lowest) cell voltage: a pack whose readings go missing
        # or that goes offline keeps counting in the tables with what it last showed.
        self._last_cells: dict[str, tuple[float | None, float | None]] = {}
        # pack id -> its last snapshot with a trusted cell count, and that count: a pack whose count
        # turns unknown or that goes offline keeps its per-cell limits in the bank CVL.
        self._last_counted: dict[str, tuple[PackSnapshot, int]] = {}
        self._cvl_source = ""
        # pack id -> the last distrusted count: said once per count, not at every voltage swing
        self._misfits: dict[str, int] = {}
        self.last: OwnDecision | None = None
        self._unsaved: dict[str, Any] | None = None  # a changed balancing record not handed out
        self._feedin_wish: tuple[bool, str] | None = None  # the latest decision's, not taken

    def load(self, data: Mapping[str, Any] | None, problem: str | None) -> None:
        """The balancing state as read by persist.read_json; used at the first tick."""
        self._loaded = (data, problem)

    # ----- the strategy ----------------------------------------------------------------------

    def limits(self, ctx: TickContext, current: CurrentResult) -> ChargeLimits:
        known = {p.id for p in ctx.online} | {p.id for p in ctx.offline}
        decision = self.decide(ctx.now, local_time(ctx), ctx.online,
                               _cap(bound(ctx, CHARGE)), _cap(bound(ctx, DISCHARGE)),
                               charging=_charging(current.current, self.idle_current), known=known)
        self.last = decision
        if decision.balancing_save is not None:
            self._unsaved = dict(decision.balancing_save)
        self._feedin_wish = (decision.feedin_wanted, decision.feedin_reason)
        return ChargeLimits(
            cvl=decision.cvl, ccl=decision.ccl.value, dcl=decision.dcl.value,
            charge_reason=decision.ccl.reason, discharge_reason=decision.dcl.reason,
            charge_source=decision.ccl.source, discharge_source=decision.dcl.source,
            events=decision.events, values={CHARGE_MODE: decision.charge_mode},
        )

    # ----- the decision ----------------------------------------------------------------------

    def decide(self, now: float, wall: datetime, packs: Sequence[PackSnapshot],
               charge_cap: Limit, discharge_cap: Limit, charging: bool = True,
               known: Collection[str] | None = None) -> OwnDecision:
        """`charging`: the bank takes charge current now (or its current is unknown). `known`: the
        ids of every known pack, online or not (None: keep what is remembered of absent packs)."""
        p = self.params
        events: list[Event] = []
        save: Mapping[str, Any] | None = None
        if self.balancing is None:
            save = self._start_balancing(now, wall, events)

        counts, misfits = self._cell_counts(packs, events)
        counted = self._counted(packs, counts, known)
        cells_of = {pack.id: n for pack, n in counted}
        uncounted = [pack for pack in packs if counts[pack.id] is None]
        month = wall.month
        cvl: float | None
        if counted:
            hard_cap, cap_pack = _bank(counted, p.max_cell_voltage)
            # The bank never goes above the hard cap, so balancing compares with what it can reach.
            month_cvl, _ = _bank(counted, p.charge_cell_voltage[month - 1])
            normal = min(month_cvl, hard_cap)
            balancing_cvl, _ = _bank(counted, p.balancing_cell_voltage)
            floor = max(n * p.min_cell_voltage for _, n in counted)
            tolerance = min(n for _, n in counted) * p.balancing_tolerance
            voltages = [pack.voltage for pack in packs if pack.voltage is not None]
            assert self.balancing is not None
            step = self.balancing.step(now, wall, BalancingInputs(
                cvl_normal=normal, cvl_balancing=balancing_cvl, tolerance=tolerance,
                bank_voltage=sum(voltages) / len(voltages) if voltages else None,
                cell_diff=largest_cell_diff(packs), charging=charging))
            events.extend(step.events)
            if step.changed:
                save = self.balancing.record.to_json()
            cvl = step.target
            capped = (f"max cell voltage {p.max_cell_voltage:.3f} V x {cells_of[cap_pack.id]} cells "
                      f"({cap_pack.name})")
            if step.phase is not Phase.IDLE:
                source, mode = "balancing", step.reason
            elif month_cvl > hard_cap:
                source = "max_cell"
                mode = (f"{MONTHS[month - 1]} charge voltage {p.charge_cell_voltage[month - 1]:.3f} "
                        f"V/cell capped at {capped}; {step.reason}")
            else:
                source = "month"
                mode = (f"{MONTHS[month - 1]} charge voltage {p.charge_cell_voltage[month - 1]:.3f} "
                        f"V/cell; {step.reason}")
            if hard_cap < cvl:
                cvl, source, mode = hard_cap, "max_cell", capped
            if p.dynamic_cvl:
                dyn = self.dynamic.update(now, cvl, packs, floor, known)
                if dyn.active and dyn.cvl < cvl:
                    cvl, source, mode = dyn.cvl, "dynamic", dyn.reason or "dynamic CVL"
                self._note_dynamic(dyn.active, dyn.reason, events)
        else:
            cvl, source, mode = None, "none", "no pack reports its cell count"
        for pack in uncounted:
            if pack.cvl is not None and (cvl is None or pack.cvl < cvl):
                cvl, source = pack.cvl, "pack_cvl"
                why = "does not fit its voltage" if pack.id in misfits else "unknown"
                mode = f"{pack.name}: cell count {why}, its own CVL applies"
        if source != self._cvl_source:
            self._cvl_source = source
            events.append(LimitSourceChanged("CVL", mode))

        pack_lows = {pack.id: lowest_cell(pack) for pack in packs}
        highs, lows = self._cell_extremes(packs, pack_lows, known)
        missing = self._unknown_lows(packs, pack_lows, known)
        charge_block = next((f"{pack.name} ({block})" for pack in packs
                             if (block := pack.charge_block()) is not None), None)
        discharge_block = next((f"{pack.name} ({block})" for pack in packs
                                if (block := pack.discharge_block()) is not None), None)
        ccl, dcl = self.tables.update(TableInputs(
            max_cell=max(highs) if highs else None, min_cell=min(lows) if lows else None,
            charge_blocked_by=charge_block, discharge_blocked_by=discharge_block,
            charge_cap=charge_cap, discharge_cap=discharge_cap, missing=missing))
        self._note_latch(dcl, events)
        self._remember_low_packs(packs, pack_lows, missing, events)

        wanted, why = self._feedin(charge_block, mode if source == "dynamic" else None)
        return OwnDecision(cvl, source, mode, ccl, dcl, wanted, why, tuple(events), save)

    def _cell_counts(self, packs: Sequence[PackSnapshot],
                     events: list[Event]) -> tuple[dict[str, int | None], set[str]]:
        """Each pack's trusted cell count (None: unknown), and the ids whose count was distrusted."""
        counts: dict[str, int | None] = {}
        misfits: set[str] = set()
        for pack in packs:
            n = cell_count(pack)
            why = None if n is None else count_misfit(
                pack, n, self.params.min_cell_voltage, self.params.max_cell_voltage)
            if n is None or why is None:
                counts[pack.id] = n
                continue
            counts[pack.id] = None
            misfits.add(pack.id)
            if self._misfits.get(pack.id) != n:
                self._misfits[pack.id] = n
                events.append(StrategyNote(f"{pack.name}: cell count {n} not used ({why}); "
                                           "its own CVL caps the bank"))
        return counts, misfits

    def _counted(self, packs: Sequence[PackSnapshot], counts: Mapping[str, int | None],
                 known: Collection[str] | None) -> list[tuple[PackSnapshot, int]]:
        """(pack, cell count) for the per-cell limits: the online packs with a trusted count, and
        the last trusted count of every other known pack (count unknown now, or not online)."""
        if known is not None:
            self._last_counted = {pid: v for pid, v in self._last_counted.items() if pid in known}
        for pack in packs:
            n = counts[pack.id]
            if n is not None:
                self._last_counted[pack.id] = (pack, n)
        return [(pack, n) for pack in packs if (n := counts[pack.id]) is not None] + [
            last for pid, last in self._last_counted.items() if counts.get(pid) is None]

    def _start_balancing(self, now: float, wall: datetime, events: list[Event]) -> Mapping[str, Any] | None:
        data, problem = self._loaded
        if data is None:
            record, problems = BalancingRecord(), ([problem] if problem else [])
        else:
            record, problems = BalancingRecord.from_json(data)
        self.balancing = Balancing(self.params.balancing, record, now, wall)
        if problems:
            events.append(StrategyNote("balancing state: " + "; ".join(problems)
                                       + f" (last balancing {record.last_balancing or 'never'})"))
            return self.balancing.record.to_json()
        return None

    def _cell_extremes(self, packs: Sequence[PackSnapshot], lows: Mapping[str, float | None],
                       known: Collection[str] | None) -> tuple[list[float], list[float]]:
        """The highest and lowest cell voltages the tables judge: every readable pack's present
        ones, and the last ones of the known packs that cannot be read now (no valid reading, or
        not online), so that losing a reading never raises CCL or DCL."""
        if known is not None:
            self._last_cells = {pid: v for pid, v in self._last_cells.items() if pid in known}
        for pack in packs:
            last_high, last_low = self._last_cells.get(pack.id, (None, None))
            high, low = highest_cell(pack), lows[pack.id]
            self._last_cells[pack.id] = (last_high if high is None else high,
                                         last_low if low is None else low)
        highs = [high for high, _ in self._last_cells.values() if high is not None]
        return highs, [low for _, low in self._last_cells.values() if low is not None]

    def _unknown_lows(self, packs: Sequence[PackSnapshot], lows: Mapping[str, float | None],
                      known: Collection[str] | None) -> str | None:
        """Why the bank's lowest cell is not fully known this tick, or None. A pack that never
        published cell voltages is not counted: it has never had a say in the latch."""
        if known is not None:
            self._read_low &= set(known)
            self._low_packs = {pid: name for pid, name in self._low_packs.items() if pid in known}
        dark = [f"{pack.name} has no valid cell voltage" for pack in packs
                if lows[pack.id] is None and pack.id in self._read_low]
        away = [f"{name} (at the cut-off) is offline" for pid, name in self._low_packs.items()
                if pid not in lows]
        self._read_low |= {pid for pid, low in lows.items() if low is not None}
        return "; ".join(dark + away) or None

    def _remember_low_packs(self, packs: Sequence[PackSnapshot], lows: Mapping[str, float | None],
                            missing: str | None, events: list[Event]) -> None:
        if self.tables.latch is not Latch.CUT:
            self._low_packs.clear()
            self._latch_kept = None
            return
        release = self.params.min_cell_voltage + self.params.tables.min_cell_hysteresis
        self._low_packs.update({pack.id: pack.name for pack in packs
                                if (low := lows[pack.id]) is not None and low <= release})
        if missing != self._latch_kept:
            self._latch_kept = missing
            if missing is not None:
                events.append(DischargeCutOffKept(missing))

    def _feedin(self, charge_block: str | None, dynamic_reason: str | None) -> tuple[bool, str]:
        if dynamic_reason is not None or self.dynamic.limit is not None:
            return True, dynamic_reason or "CVL lowered for an over-voltage cell"
        if self.params.also_when_blocking and charge_block is not None:
            return True, f"{charge_block} blocks charging"
        return False, ""

    def _note_dynamic(self, active: bool, reason: str | None, events: list[Event]) -> None:
        if active != self._dynamic_active:
            self._dynamic_active = active
            events.append(DynamicCvlChanged(active, reason if active else None))

    def _note_latch(self, dcl: Limit, events: list[Event]) -> None:
        latch = self.tables.latch
        if latch is not self._latch:
            if latch is Latch.CUT:
                events.append(DischargeCutOff(dcl.reason))
            elif self._latch is Latch.CUT:
                events.append(DischargeCutOffReleased())
            self._latch = latch

    def next_balancing(self, today: date) -> date | None:
        return self.balancing.next_due(today) if self.balancing is not None else None

    # ----- lifecycle hooks (strategies.Stateful, Reporting) --------------------------------------

    def restore_state(self, data: Mapping[str, Any] | None, problem: str | None,
                      wall: float) -> None:
        self.load(data, problem)

    def state_to_save(self, wall: float) -> dict[str, Any] | None:
        record, self._unsaved = self._unsaved, None
        return record

    def state_at_stop(self, wall: float) -> dict[str, Any] | None:
        return self.state_to_save(wall)

    def state_to_carry(self, wall: float) -> dict[str, Any] | None:
        return self.balancing.record.to_json() if self.balancing is not None else None

    def take_feedin(self) -> tuple[bool, str] | None:
        """(wanted, reason) of the decision made since the last call, once; None after a tick
        that failed (no new decision: the feed-in guard waits)."""
        wish, self._feedin_wish = self._feedin_wish, None
        return wish

    def status(self) -> dict[str, Any]:
        balancing = self.balancing
        return {"balancing": balancing.record.to_json() if balancing is not None else None}
