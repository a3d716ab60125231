"""CoulombCounter: the bank's own state of charge, counted from the bank current.

Rules:

- Charge Q (Ah) integrates the bank current I (A, + = charging) over the MONOTONIC clock the caller
  passes in. The wall clock is read only to judge the state record at `load()` and to stamp a
  record when it is written (`SaveDecision.record(wall)`), so an NTP or RTC step never creates or
  destroys charge (the reference integrates wall time: reference §11 item 9).
- Between two ticks the current is taken as a straight line from the previous to the present
  reading (trapezoid rule); a reading that is missing (None) uses the other end. Charge efficiency
  applies to the charging part only, also when the line crosses zero inside the interval.
- An interval that is not positive, or longer than `max_gap` (a stalled loop, a suspended process:
  the current in between is unknown), integrates nothing and says so in one event line.
- Q stays within [0, C], C the installed capacity of the online packs. When C changes (a pack goes
  offline or comes back) Q is rescaled so the SoC in % is kept: the charge of a lost pack leaves
  with it and returns with it. Without any online pack the last capacity is kept.
- Full reset: Q = C once the highest cell is at or above `full_cell_voltage`, the charge current
  is at or below `tail_current` (when set) and both have held for `full_hold_time` seconds, so a
  cell peaking in the middle of a charge does not declare the bank full. Empty reset (with
  `zero_soc_reset`): Q = 0 once the lowest cell is at or below `empty_cell_voltage` for
  `empty_hold_time` seconds, so a load spike sagging a cell does not zero the SoC. A reset pins Q
  while its condition holds and is reported once per episode.
- Start: the saved record is used when it is valid, not from the future (beyond `future_skew`)
  and not older than `max_state_age` at load time; its SoC in % is kept when the installed
  capacity differs from the saved one. Otherwise Q starts from the capacity-weighted BMS SoC of the
  online packs. Until either is possible (no pack online yet) nothing is published: never an
  invented 0 %.
- A record without a capacity (converted from dbus-aggregate-batteries, which saved only the Ah)
  holds the charge of the whole bank, so it has no SoC until the whole bank is there: restoring it
  against the first pack online would clamp it to that pack (100 %) and keep that wrong SoC as the
  others arrive. It waits until no known pack is offline, at least `discovery.expected_packs` are
  online and the online capacity has not changed for `restore_settle` seconds (packs still
  appearing one by one), or at most `restore_max_wait` seconds; then it is restored when it fits
  the installed capacity, else Q starts from the BMS SoC. Either way a full record is saved at
  once.
- Saving: a `SaveDecision` is returned right after initialising from the BMS SoC and after a
  reset (rare, and worth keeping across a crash), and otherwise at most once per `save_interval`
  when Q moved by at least `save_precision` x C since the last save; `shutdown()` gives the final
  one. A decision counts as saved once returned: a failed write is logged by the caller and the
  next decision follows the same rules.
- TimeToGo: seconds until Q reaches the ESS minimum SoC (when known and enabled, else 0 %) at the
  present discharge current; None while the bank is charging or |I| is below `idle_current`.

Theory of operation: `load()` judges the raw state file once; `update()` runs every engine tick
with the monotonic clock and the bank readings and returns the published values, event lines and
possibly a save decision. The counter is a small state machine:

    state          event                                   next state
    -------------  --------------------------------------  -------------
    WAITING        update, usable record, capacity known   COUNTING (restored)
    WAITING        update, BMS SoC and capacity known      COUNTING (from BMS, save)
    WAITING        update, neither                         WAITING (values None)
    COUNTING       update                                  COUNTING

`CoulombSoc` is the engine's SocStrategy around the counter: it reads the online packs, the ESS
minimum SoC (a reading of com.victronenergy.settings that the daemon adds to the tick) and keeps
the latest save decision for the daemon (`take_save()`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from aggbatt.core.events import Event, StrategyNote
from aggbatt.core.strategies import CurrentResult, SocResult, StateFile, TickContext
from aggbatt.core.strategies.soc import TTG_MIN_CURRENT, BmsAverage

STATE_FILE = "soc.json"
STATE_VERSION = 1
MIN_SOC_SETTING = "/Settings/CGwacs/BatteryLife/MinimumSocLimit"


class SocSettings(Protocol):
    """What the counter reads of the [soc] table; the core never sees the config's own types."""

    @property
    def charge_efficiency(self) -> float: ...
    @property
    def save_interval(self) -> float: ...
    @property
    def save_precision(self) -> float: ...
    @property
    def max_state_age(self) -> float: ...
    @property
    def full_cell_voltage(self) -> float: ...
    @property
    def empty_cell_voltage(self) -> float: ...
    @property
    def zero_soc_reset(self) -> bool: ...
    @property
    def tail_current(self) -> float: ...
    @property
    def full_hold_time(self) -> float: ...
    @property
    def time_to_go_to_min_soc(self) -> bool: ...


@dataclass(frozen=True)
class CoulombParams:
    charge_efficiency: float = 1.0
    save_interval: float = 60.0
    save_precision: float = 0.0025
    max_state_age: float = 7 * 86400.0
    full_cell_voltage: float | None = None
    empty_cell_voltage: float | None = None
    zero_soc_reset: bool = False
    tail_current: float | None = None
    full_hold_time: float = 0.0
    empty_hold_time: float = 5.0
    time_to_go_to_min_soc: bool = True
    max_gap: float = 5.0
    future_skew: float = 3600.0  # a GX without RTC may boot with the clock of its last save
    idle_current: float = TTG_MIN_CURRENT  # below this discharge current /TimeToGo is invalid
    restore_settle: float = 30.0  # a record without capacity: s without a pack arriving
    restore_max_wait: float = 300.0  # ... and at most this long waiting for offline known packs

    @classmethod
    def from_config(cls, soc: SocSettings, tick_interval: float = 1.0) -> CoulombParams:
        """From the [soc] config section; a gap of more than five ticks is not counted."""
        tail = soc.tail_current
        return cls(
            charge_efficiency=soc.charge_efficiency,
            save_interval=soc.save_interval,
            save_precision=soc.save_precision,
            max_state_age=soc.max_state_age,
            full_cell_voltage=soc.full_cell_voltage,
            empty_cell_voltage=soc.empty_cell_voltage,
            zero_soc_reset=soc.zero_soc_reset,
            tail_current=tail if tail is not None and tail > 0 else None,
            full_hold_time=soc.full_hold_time,
            time_to_go_to_min_soc=soc.time_to_go_to_min_soc,
            max_gap=max(5.0, 5 * tick_interval),
        )


@dataclass(frozen=True)
class CounterInputs:
    current: float | None = None           # bank current, A, + = charging
    capacity: float | None = None          # installed capacity of the online packs, Ah
    bms_soc: float | None = None           # capacity-weighted BMS SoC of the online packs, %
    max_cell_voltage: float | None = None
    min_cell_voltage: float | None = None
    min_soc_limit: float | None = None     # ESS /Settings/CGwacs/BatteryLife/MinimumSocLimit, %
    packs_offline: int = 0                 # known packs that are not online


@dataclass(frozen=True)
class SaveDecision:
    charge_ah: float
    capacity_ah: float
    reason: str

    def record(self, wall: float) -> dict[str, Any]:
        """The JSON object to write as STATE_FILE (persist.write_json_atomic), stamped `wall`."""
        return {"version": STATE_VERSION, "charge_ah": round(self.charge_ah, 4),
                "capacity_ah": round(self.capacity_ah, 4), "saved_at": iso_time(wall)}


@dataclass(frozen=True)
class CounterStep:
    values: dict[str, Any]                 # /Soc, /Capacity, /ConsumedAmphours, /TimeToGo
    events: list[Event] = field(default_factory=list)
    save: SaveDecision | None = None


def _notes(lines: list[str]) -> list[Event]:
    return [StrategyNote(line) for line in lines]


OUTPUT_PATHS = ("/Soc", "/Capacity", "/ConsumedAmphours", "/TimeToGo")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def iso_time(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds")


def parse_record(data: Mapping[str, Any] | None, problem: str | None, wall: float,
                 params: CoulombParams) -> tuple[float, float | None, float] | str:
    """(charge_ah, capacity_ah or None, age_s) of a usable record, else why it is not usable."""
    if data is None:
        return problem or "no state record"
    charge = _number(data.get("charge_ah"))
    if charge is None or charge < 0:
        return f"charge_ah {data.get('charge_ah')!r} is not a charge in Ah"
    saved_at = data.get("saved_at")
    if not isinstance(saved_at, str):
        return f"saved_at {saved_at!r} is not a time"
    try:
        stamp = datetime.fromisoformat(saved_at.replace("Z", "+00:00"))
    except ValueError:
        return f"saved_at {saved_at!r} is not an ISO time"
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    age = wall - stamp.timestamp()
    if age < -params.future_skew:
        return f"saved_at {saved_at} lies {-age:.0f} s in the future (clock was set back?)"
    if age > params.max_state_age:
        return (f"saved_at {saved_at} is {age / 3600:.1f} h old "
                f"(max_state_age {params.max_state_age:.0f} s)")
    capacity = _number(data.get("capacity_ah"))
    return charge, capacity if capacity is not None and capacity > 0 else None, max(age, 0.0)


def _since(since: float | None, now: float, holds: bool) -> float | None:
    """When a condition began holding (kept while it holds), None while it does not hold."""
    if not holds:
        return None
    return now if since is None else since


def interval_charge(i0: float | None, i1: float | None, dt: float, efficiency: float) -> float:
    """Ah moved by a current going linearly from i0 to i1 over dt seconds; efficiency on charge."""
    if i0 is None and i1 is None:
        return 0.0
    a = i1 if i0 is None else i0
    b = i0 if i1 is None else i1
    assert a is not None and b is not None
    hours = dt / 3600.0
    if (a >= 0) == (b >= 0) or a == 0 or b == 0:
        ah = (a + b) / 2 * hours
        return ah * efficiency if a + b > 0 else ah
    crossing = a / (a - b)                  # fraction of dt spent before the sign change
    first = a * crossing * hours / 2
    second = b * (1 - crossing) * hours / 2
    positive, negative = (first, second) if a > 0 else (second, first)
    return positive * efficiency + negative


class CoulombCounter:
    def __init__(self, params: CoulombParams) -> None:
        self.params = params
        self.charge: float | None = None          # Ah; None until initialised
        self.capacity: float | None = None        # Ah the charge refers to
        self._stored: tuple[float, float | None, float] | str = "no state record"
        self._waiting_logged = False
        self._last_t: float | None = None
        self._last_i: float | None = None
        self._current_missing = False
        self._full_since: float | None = None
        self._empty_since: float | None = None
        self._full_latched = False
        self._empty_latched = False
        self._saved_charge: float | None = None
        self._saved_t: float | None = None
        self._bank: tuple[float, float] | None = None  # (capacity, since) while a record waits
        self._bank_wait_since: float | None = None

    def load(self, data: Mapping[str, Any] | None, problem: str | None, wall: float) -> None:
        """The state file as read (persist.read_json) and the wall time now (epoch seconds)."""
        self._stored = parse_record(data, problem, wall, self.params)

    @property
    def soc(self) -> float | None:
        if self.charge is None or not self.capacity:
            return None
        return min(100.0, 100.0 * self.charge / self.capacity)

    def update(self, now: float, inputs: CounterInputs) -> CounterStep:
        events: list[str] = []
        current = _number(inputs.current)
        capacity = _number(inputs.capacity)
        capacity = capacity if capacity is not None and capacity > 0 else None
        forced: str | None = None
        if self.charge is None:
            forced = self._initialise(now, capacity, _number(inputs.bms_soc), events,
                                      inputs.packs_offline)
            if self.charge is None:
                return CounterStep(dict.fromkeys(OUTPUT_PATHS), _notes(events))
        else:
            self._rescale(capacity, events)
            self._integrate(now, current, events)
        self._last_t, self._last_i = now, current
        forced = self._resets(now, current, inputs, events) or forced
        return CounterStep(self._values(current, inputs), _notes(events),
                           self._save_decision(now, forced))

    def shutdown(self) -> SaveDecision | None:
        if self.charge is None or self.capacity is None:
            return None
        return SaveDecision(self.charge, self.capacity, "shutdown")

    # ----- steps ---------------------------------------------------------------------------

    def _initialise(self, now: float, capacity: float | None, bms_soc: float | None,
                    events: list[str], packs_offline: int = 0) -> str | None:
        if capacity is None:
            self._wait(events, "no pack online yet")
            return None
        parsed = self._stored
        if isinstance(parsed, tuple) and parsed[1] is None:
            charge, _, age = parsed
            if not self._bank_complete(now, capacity, packs_offline):
                self._wait(events, f"the saved charge {charge:.2f} Ah has no capacity: waiting "
                                   "until every pack is online")
                return None
            if charge <= capacity:
                self.charge, self.capacity = charge, capacity
                self._saved_charge, self._saved_t = charge, now
                events.append(f"own SoC restored: {charge:.2f} Ah of {capacity:.1f} Ah installed "
                              f"= {self.soc:.1f} % (state saved {age:.0f} s ago)")
                return "restored with the capacity"
            parsed = (f"the saved charge {charge:.2f} Ah exceeds the {capacity:.1f} Ah "
                      "installed, so it is not this bank's")
            self._stored = parsed
        if isinstance(parsed, tuple):
            charge, saved_capacity, age = parsed
            if saved_capacity is not None and abs(saved_capacity - capacity) > 1e-6:
                charge = charge * capacity / saved_capacity
                note = f", rescaled from {saved_capacity:.1f} Ah to {capacity:.1f} Ah installed"
            else:
                note = ""
            self.charge = min(charge, capacity)
            self.capacity = capacity
            self._saved_charge, self._saved_t = charge, now
            events.append(f"own SoC restored: {self.charge:.2f} Ah = {self.soc:.1f} % "
                          f"(state saved {age:.0f} s ago{note})")
            return None
        if bms_soc is None:
            self._wait(events, f"state not usable ({parsed}) and no BMS SoC yet")
            return None
        self.charge = min(max(bms_soc, 0.0), 100.0) / 100.0 * capacity
        self.capacity = capacity
        events.append(f"own SoC initialised from the BMS SoC {bms_soc:.1f} % = "
                      f"{self.charge:.2f} Ah of {capacity:.1f} Ah: {parsed}")
        return "initialised"

    def _bank_complete(self, now: float, capacity: float, packs_offline: int) -> bool:
        """Whether the packs have stopped arriving (module header, a record without capacity)."""
        if self._bank is None or abs(self._bank[0] - capacity) > 1e-6:
            self._bank = (capacity, now)
        if self._bank_wait_since is None:
            self._bank_wait_since = now
        p = self.params
        settled = now - self._bank[1] >= p.restore_settle and packs_offline == 0
        return settled or now - self._bank_wait_since >= p.restore_max_wait

    def _wait(self, events: list[str], why: str) -> None:
        if not self._waiting_logged:
            self._waiting_logged = True
            events.append(f"own SoC waiting: {why}; /Soc stays invalid until then")

    def _rescale(self, capacity: float | None, events: list[str]) -> None:
        assert self.charge is not None and self.capacity is not None
        if capacity is None or abs(capacity - self.capacity) <= 1e-6:
            return
        old_charge, old_capacity = self.charge, self.capacity
        self.charge = min(old_charge * capacity / old_capacity, capacity)
        self.capacity = capacity
        events.append(f"installed capacity {old_capacity:.1f} -> {capacity:.1f} Ah: own charge "
                      f"rescaled {old_charge:.2f} -> {self.charge:.2f} Ah, "
                      f"SoC kept at {self.soc:.1f} %")

    def _integrate(self, now: float, current: float | None, events: list[str]) -> None:
        assert self.charge is not None and self.capacity is not None
        if current is None and self._last_i is None:
            if not self._current_missing:
                self._current_missing = True
                events.append("own SoC: no bank current, charge not counted until it returns")
        elif self._current_missing:
            self._current_missing = False
            events.append("own SoC: bank current back, counting again")
        if self._last_t is None:
            return
        dt = now - self._last_t
        if dt <= 0:
            if dt < 0:
                events.append(f"own SoC: monotonic clock went back {-dt:.3f} s; "
                              "interval not counted")
            return
        if dt > self.params.max_gap:
            events.append(f"own SoC: {dt:.1f} s since the last tick (more than "
                          f"{self.params.max_gap:.1f} s); the current in that gap is unknown "
                          "and not counted")
            return
        moved = interval_charge(self._last_i, current, dt, self.params.charge_efficiency)
        self.charge = min(max(self.charge + moved, 0.0), self.capacity)

    def _resets(self, now: float, current: float | None, inputs: CounterInputs,
                events: list[str]) -> str | None:
        assert self.charge is not None and self.capacity is not None
        p = self.params
        vmax = _number(inputs.max_cell_voltage)
        vmin = _number(inputs.min_cell_voltage)
        tail_ok = p.tail_current is None or (current is not None and 0 <= current <= p.tail_current)
        full = (p.full_cell_voltage is not None and vmax is not None
                and vmax >= p.full_cell_voltage and tail_ok)
        empty = (p.zero_soc_reset and p.empty_cell_voltage is not None and vmin is not None
                 and vmin <= p.empty_cell_voltage)
        self._full_since = _since(self._full_since, now, full)
        self._empty_since = _since(self._empty_since, now, empty)
        fired: str | None = None
        if self._full_since is not None and now - self._full_since >= p.full_hold_time:
            if not self._full_latched:
                tail = ("" if p.tail_current is None
                        else f", current {current:.1f} A <= {p.tail_current:.1f} A")
                events.append(f"own SoC reset to 100 % ({self.charge:.2f} -> "
                              f"{self.capacity:.2f} Ah): max cell {vmax:.3f} V >= "
                              f"{p.full_cell_voltage:.3f} V{tail} "
                              f"for {now - self._full_since:.0f} s")
                fired = "full reset"
            self._full_latched = True
            self.charge = self.capacity
        else:
            self._full_latched = False
        if self._empty_since is not None and now - self._empty_since >= p.empty_hold_time:
            if not self._empty_latched:
                events.append(f"own SoC reset to 0 % ({self.charge:.2f} -> 0 Ah): min cell "
                              f"{vmin:.3f} V <= {p.empty_cell_voltage:.3f} V "
                              f"for {now - self._empty_since:.0f} s")
                fired = "empty reset"
            self._empty_latched = True
            self.charge = 0.0
        else:
            self._empty_latched = False
        return fired

    def _values(self, current: float | None, inputs: CounterInputs) -> dict[str, Any]:
        assert self.charge is not None and self.capacity is not None
        return {
            "/Soc": self.soc,
            "/Capacity": self.charge,
            "/ConsumedAmphours": self.charge - self.capacity,
            "/TimeToGo": self._time_to_go(current, _number(inputs.min_soc_limit)),
        }

    def _time_to_go(self, current: float | None, min_soc: float | None) -> int | None:
        assert self.charge is not None and self.capacity is not None
        if current is None or current > -self.params.idle_current:
            return None
        floor = 0.0
        if self.params.time_to_go_to_min_soc and min_soc is not None and 0 <= min_soc <= 100:
            floor = min_soc / 100.0 * self.capacity
        return round(3600.0 * max(self.charge - floor, 0.0) / -current)

    def _save_decision(self, now: float, forced: str | None) -> SaveDecision | None:
        assert self.charge is not None and self.capacity is not None
        reason = forced
        if reason is None and self._saved_charge is not None and self._saved_t is not None:
            due = now - self._saved_t >= self.params.save_interval
            step = self.params.save_precision * self.capacity
            moved = abs(self.charge - self._saved_charge) >= step
            if due and moved:
                reason = "changed"
        if reason is None:
            return None
        self._saved_charge, self._saved_t = self.charge, now
        return SaveDecision(self.charge, self.capacity, reason)


class CoulombSoc:
    """The SocStrategy for `soc.strategy = "coulomb_counter"` (module header)."""

    name = "coulomb_counter"
    state_file = StateFile(STATE_FILE, STATE_VERSION, "the own SoC")

    def __init__(self, params: CoulombParams) -> None:
        self.counter = CoulombCounter(params)
        self._bms = BmsAverage()
        self._save: SaveDecision | None = None
        self.settings: Mapping[str, str] = (
            {MIN_SOC_SETTING: "no ESS minimum SoC: /TimeToGo counts down to 0 %"}
            if params.time_to_go_to_min_soc else {})

    @classmethod
    def from_config(cls, config: Any) -> CoulombSoc:
        return cls(CoulombParams.from_config(config.soc, config.service.tick_interval))

    def estimate(self, ctx: TickContext, current: CurrentResult) -> SocResult:
        online = ctx.online
        capacities = [p.installed_capacity for p in online if p.installed_capacity is not None]
        highs = [p.max_cell_voltage for p in online if p.max_cell_voltage is not None]
        lows = [p.min_cell_voltage for p in online if p.min_cell_voltage is not None]
        step = self.counter.update(ctx.now, CounterInputs(
            current=current.current,
            capacity=sum(capacities) if capacities else None,
            bms_soc=self._bms.estimate(ctx, current).soc if self.counter.charge is None else None,
            max_cell_voltage=max(highs) if highs else None,
            min_cell_voltage=min(lows) if lows else None,
            min_soc_limit=min_soc_limit(ctx),
            packs_offline=len(ctx.offline) + max(0, expected_packs(ctx) - len(online)),
        ))
        if step.save is not None:
            self._save = step.save
        v = step.values
        return SocResult(v["/Soc"], v["/Capacity"], v["/ConsumedAmphours"], v["/TimeToGo"],
                         events=tuple(step.events))

    def take_save(self) -> SaveDecision | None:
        """The save decision of the latest ticks, once; the daemon writes it."""
        save, self._save = self._save, None
        return save

    # ----- lifecycle hooks (strategies.Stateful) -------------------------------------------------

    def restore_state(self, data: Mapping[str, Any] | None, problem: str | None,
                      wall: float) -> None:
        self.counter.load(data, problem, wall)

    def state_to_save(self, wall: float) -> dict[str, Any] | None:
        save = self.take_save()
        return save.record(wall) if save is not None else None

    def state_at_stop(self, wall: float) -> dict[str, Any] | None:
        return self.state_to_carry(wall)

    def state_to_carry(self, wall: float) -> dict[str, Any] | None:
        kept = self.counter.shutdown()
        return kept.record(wall) if kept is not None else None


def expected_packs(ctx: TickContext) -> int:
    """discovery.expected_packs (0 = no expectation); a context without a config expects none."""
    return int(ctx.config.discovery.expected_packs) if ctx.config is not None else 0


def min_soc_limit(ctx: TickContext) -> float | None:
    return _number(ctx.settings.get(MIN_SOC_SETTING))
