"""Periodic balancing charge: a small state machine over calendar dates.

Rules (docs/reference-aggregator.md §3, with the defects of §11 items 1 and 2 fixed):

- The bank is charged to the balancing voltage every `repetition` days. The last balancing is a
  calendar date (not a day of the year), so month and year changes, leap days and gaps of years
  count correctly. Due: never balanced, or `repetition` days or more since the last balancing, or
  the stored date is after today (the clock was stepped back, or the date was written by a wrong
  clock: when unsure, balance; a balancing charge stays within the configured cell voltages).
- A due balancing starts (raising) only while the bank charges (or its current is unknown): a
  due day begins at midnight, and an attempt started then would spend its timeout in the dark.
- Goal: bank voltage >= balancing CVL - tolerance (cable and shunt drop: the BMS measures less than
  the charger regulates, 3.11 item 2; there is no drop without current, so at rest the tolerance
  does not apply) and the largest cell difference inside a pack < cell_diff_max.
- After the goal the balancing CVL is held until the bank, no longer charging, has fallen to the
  normal CVL (the evening's own consumption); that date becomes the last balancing. "No longer
  charging" keeps a cable drop under charge current (the BMS reading below the normal CVL while
  the charger holds the balancing CVL) from ending the hold at once.
- A goal not reached within `timeout` seconds of raising is given up and logged, and not retried
  before the next calendar day, so the bank is never held at balancing voltage forever.
- The hold after the goal also ends after `timeout` seconds (the balancing counts as done): a bank
  that never discharges, e.g. a backup bank kept full from the grid, would otherwise sit at the
  balancing voltage for weeks, which ages lithium cells.
- When the balancing CVL is not above the normal CVL (a month whose charge voltage already reaches
  it, as in the LFP preset) there is nothing to raise: a due balancing counts as done when the goal
  is met at the normal CVL.
- The state survives restarts in every phase (see `BalancingRecord`). The raising time is measured
  on the monotonic clock while running; across a restart the wall time since `phase_since` is added,
  so a crash loop cannot extend the timeout. `phase_since` is kept in UTC: a local time would put
  the timeout an hour off when a daylight-saving change falls between the save and the restart.
  Dates (last balancing, given up on) stay local calendar dates, as the user counts days.

Theory of operation: the caller computes the bank voltages (normal and balancing CVL, tolerance)
from the per-cell settings and the packs' cell counts, and calls `step` every tick. `step` derives
at most one event per phase from the readings, applies the transition table, and may chain
idle -> raising -> holding in one tick (as the reference did); reaching holding or idle ends the
tick, so the goal and the fall back never happen in the same tick.

    phase \\ event | DUE      | GOAL     | TIMED_OUT | FELL_BACK | DONE_AT_NORMAL
    --------------+----------+----------+-----------+-----------+---------------
    IDLE          | RAISING  |          |           |           | IDLE (record date)
    RAISING       |          | HOLDING  | IDLE      |           |
    HOLDING       |          |          |           | IDLE (record date) |
    HOLDING + HOLD_EXPIRED -> IDLE (record date)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from typing import Any

from aggbatt.core.events import Event as LogEvent
from aggbatt.core.events import StrategyNote

STATE_VERSION = 1
EPSILON = 1e-6  # V: 55.2 - 0.8 is 54.400000000000006 in floating point, and 54.4 must count


class Phase(enum.Enum):
    IDLE = "idle"
    RAISING = "raising"
    HOLDING = "holding"


class Event(enum.Enum):
    DUE = "due"
    GOAL = "goal reached"
    TIMED_OUT = "timed out"
    FELL_BACK = "fell back to the normal CVL"
    HOLD_EXPIRED = "hold time over"
    DONE_AT_NORMAL = "goal reached at the normal CVL"


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.IDLE, Event.DUE): Phase.RAISING,
    (Phase.IDLE, Event.DONE_AT_NORMAL): Phase.IDLE,
    (Phase.RAISING, Event.GOAL): Phase.HOLDING,
    (Phase.RAISING, Event.TIMED_OUT): Phase.IDLE,
    (Phase.HOLDING, Event.FELL_BACK): Phase.IDLE,
    (Phase.HOLDING, Event.HOLD_EXPIRED): Phase.IDLE,
}

RECORDS_DATE = (Event.FELL_BACK, Event.DONE_AT_NORMAL, Event.HOLD_EXPIRED)


@dataclass(frozen=True)
class BalancingParams:
    repetition: int  # days
    cell_diff_max: float  # V
    timeout: float  # s


@dataclass(frozen=True)
class BalancingRecord:
    """The persisted state: {"version": 1, "last_balancing": "YYYY-MM-DD" | null,
    "phase": "idle" | "raising" | "holding", "phase_since": ISO time in UTC ("...+00:00") | null,
    "gave_up_on": "YYYY-MM-DD" | null}. `gave_up_on` may be absent (files written by
    `aggbatt migrate-ini`). Earlier versions wrote `phase_since` as a local time without offset;
    such a value is read as this machine's local time and converted to UTC once (the problems say
    so, and the caller saves the converted record)."""

    last_balancing: date | None = None
    phase: Phase = Phase.IDLE
    phase_since: datetime | None = None  # aware, UTC
    gave_up_on: date | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "last_balancing": self.last_balancing.isoformat() if self.last_balancing else None,
            "phase": self.phase.value,
            "phase_since": self.phase_since.isoformat(timespec="seconds") if self.phase_since else None,
            "gave_up_on": self.gave_up_on.isoformat() if self.gave_up_on else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> tuple[BalancingRecord, list[str]]:
        """Field by field: a bad field falls back alone and is named in the problems."""
        if not isinstance(data, dict):
            return cls(), ["the balancing state is not a JSON object"]
        problems: list[str] = []
        last = _date(data.get("last_balancing"), "last_balancing", problems)
        gave_up = _date(data.get("gave_up_on"), "gave_up_on", problems)
        raw_phase = data.get("phase", "idle")
        try:
            phase = Phase(raw_phase)
        except ValueError:
            problems.append(f"phase {raw_phase!r} is not idle/raising/holding: idle assumed")
            phase = Phase.IDLE
        since: datetime | None = None
        raw_since = data.get("phase_since")
        if raw_since is not None:
            parsed: datetime | None = None
            try:
                parsed = datetime.fromisoformat(raw_since) if isinstance(raw_since, str) else None
                since = None if parsed is None else utc(parsed)
            except (ValueError, OverflowError, OSError):
                since = None
            if since is None:
                problems.append(f"phase_since {raw_since!r} is not an ISO time: the phase restarts now")
            elif parsed is not None and parsed.tzinfo is None:
                problems.append(f"phase_since {raw_since!r} is a local time: converted to UTC "
                                f"{since.isoformat(timespec='seconds')}")
        return cls(last, phase, since, gave_up), problems


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; without a time zone it is this machine's local time, as
    `datetime.fromtimestamp` gives it (its fold tells the repeated hour of a DST change apart)."""
    return moment.astimezone(timezone.utc)


def _date(raw: Any, key: str, problems: list[str]) -> date | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    problems.append(f"{key} {raw!r} is not a YYYY-MM-DD date: treated as never")
    return None


@dataclass(frozen=True)
class BalancingInputs:
    cvl_normal: float  # bank V: the month's charge voltage
    cvl_balancing: float  # bank V
    tolerance: float  # bank V the measured voltage may stay below cvl_balancing
    bank_voltage: float | None
    cell_diff: float | None  # largest max-min cell difference inside one pack, V
    charging: bool = True  # the bank takes charge current now (or its current is unknown)


@dataclass(frozen=True)
class BalancingStep:
    target: float  # the CVL balancing asks for (bank V)
    phase: Phase
    reason: str  # for /Info/ChargeMode
    events: tuple[LogEvent, ...]
    changed: bool  # the record changed: persist it


def _elapsed(wall: datetime, since: datetime | None) -> float:
    if since is None:
        return 0.0
    return max(0.0, (utc(wall) - utc(since)).total_seconds())


class Balancing:
    def __init__(self, params: BalancingParams, record: BalancingRecord, now: float,
                 wall: datetime) -> None:
        """`record` as loaded (or the default); `now` monotonic and `wall` the wall time at start
        (local: naive as `datetime.fromtimestamp` gives it, or with a time zone)."""
        self.params = params
        self.record = record
        # Monotonic time the present phase began, rebuilt from the wall clock after a restart.
        self._phase_start = now - _elapsed(wall, record.phase_since)
        self._dirty = record.phase is not Phase.IDLE and record.phase_since is None
        if self._dirty:
            self.record = replace(record, phase_since=utc(wall))

    @property
    def phase(self) -> Phase:
        return self.record.phase

    def due(self, today: date) -> bool:
        rec = self.record
        if rec.gave_up_on == today:
            return False
        if rec.last_balancing is None:
            return True
        days = (today - rec.last_balancing).days
        return days < 0 or days >= self.params.repetition

    def next_due(self, today: date) -> date:
        """The date the next balancing becomes due (today when it is due already)."""
        if self.due(today):
            return today
        rec = self.record
        candidates = [today.fromordinal(today.toordinal() + 1)] if rec.gave_up_on == today else []
        if rec.last_balancing is not None:
            candidates.append(rec.last_balancing.fromordinal(
                rec.last_balancing.toordinal() + self.params.repetition))
        return max(candidates)

    def _goal(self, inp: BalancingInputs) -> bool:
        drop = inp.tolerance if inp.charging else 0.0
        return (inp.bank_voltage is not None and inp.cell_diff is not None
                and math.isfinite(inp.bank_voltage) and math.isfinite(inp.cell_diff)
                and inp.bank_voltage >= inp.cvl_balancing - drop - EPSILON
                and inp.cell_diff < self.params.cell_diff_max - EPSILON)

    def _event(self, now: float, today: date, inp: BalancingInputs) -> Event | None:
        phase = self.record.phase
        if phase is Phase.IDLE:
            if not self.due(today):
                return None
            if inp.cvl_balancing > inp.cvl_normal:
                return Event.DUE if inp.charging else None
            return Event.DONE_AT_NORMAL if self._goal(inp) else None
        if phase is Phase.RAISING:
            if self._goal(inp):
                return Event.GOAL
            if now - self._phase_start >= self.params.timeout:
                return Event.TIMED_OUT
            return None
        if (not inp.charging and inp.bank_voltage is not None
                and inp.bank_voltage <= inp.cvl_normal + EPSILON):
            return Event.FELL_BACK
        if now - self._phase_start >= self.params.timeout:
            return Event.HOLD_EXPIRED
        return None

    def step(self, now: float, wall: datetime, inp: BalancingInputs) -> BalancingStep:
        today = wall.date()
        events: list[LogEvent] = []
        changed, self._dirty = self._dirty, False
        for _ in range(len(Phase)):
            event = self._event(now, today, inp)
            if event is None:
                break
            before = self.record.phase
            after = TRANSITIONS[(before, event)]
            record = self.record
            if event in RECORDS_DATE:
                record = replace(record, last_balancing=today, gave_up_on=None)
            if event is Event.TIMED_OUT:
                record = replace(record, gave_up_on=today)
            if after is not before:
                record = replace(record, phase=after, phase_since=utc(wall))
                self._phase_start = now
            self.record = record
            changed = True
            events.append(StrategyNote(self._describe(before, event, after, inp, today)))
            if after is not Phase.RAISING:
                break
        return BalancingStep(self._target(inp), self.record.phase, self._reason(today, inp),
                             tuple(events), changed)

    def _target(self, inp: BalancingInputs) -> float:
        if self.record.phase is Phase.IDLE:
            return inp.cvl_normal
        return max(inp.cvl_normal, inp.cvl_balancing)

    def _reason(self, today: date, inp: BalancingInputs) -> str:
        phase = self.record.phase
        if phase is Phase.RAISING:
            return "balancing: charging to the balancing voltage"
        if phase is Phase.HOLDING:
            return "balancing: holding the balancing voltage"
        if self.due(today) and inp.cvl_balancing > inp.cvl_normal:
            return "normal charge (balancing due: starts when the bank charges)"
        if self.due(today):
            return "normal charge (balancing due: done when the goal is met at this voltage)"
        return f"normal charge (next balancing {self.next_due(today).isoformat()})"

    def _describe(self, before: Phase, event: Event, after: Phase, inp: BalancingInputs,
                  today: date) -> str:
        volts = "unknown" if inp.bank_voltage is None else f"{inp.bank_voltage:.2f} V"
        diff = "unknown" if inp.cell_diff is None else f"{inp.cell_diff * 1000:.0f} mV"
        if event is Event.DUE:
            return (f"balancing due: raising CVL to {inp.cvl_balancing:.2f} V "
                    f"(last balancing {self._last_text()})")
        if event is Event.GOAL:
            return (f"balancing goal reached at {volts}, cell difference {diff}: "
                    f"holding {max(inp.cvl_normal, inp.cvl_balancing):.2f} V until the bank "
                    f"falls to {inp.cvl_normal:.2f} V")
        if event is Event.TIMED_OUT:
            return (f"balancing given up after {self.params.timeout:g} s: bank {volts} "
                    f"(goal {inp.cvl_balancing - inp.tolerance:.2f} V), cell difference {diff} "
                    f"(goal < {self.params.cell_diff_max * 1000:.0f} mV); next try "
                    f"{self.next_due(today).isoformat()}")
        if event is Event.FELL_BACK:
            return f"balancing finished: bank at {volts}, back to the normal CVL {inp.cvl_normal:.2f} V"
        if event is Event.HOLD_EXPIRED:
            return (f"balancing finished: held {self.params.timeout:g} s without the bank falling "
                    f"back (now {volts}); back to the normal CVL {inp.cvl_normal:.2f} V")
        return (f"balancing done at the normal CVL {inp.cvl_normal:.2f} V ({volts}, "
                f"cell difference {diff})")

    def _last_text(self) -> str:
        last = self.record.last_balancing
        return "never" if last is None else last.isoformat()
