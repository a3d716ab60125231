"""Typed pack snapshots, input validation, and the pack online/offline state machine.

Everything here is pure: values and the clock come in as arguments.

Validation rules
----------------
Every path the engine reads has a rule (`RULES`). A raw value is usable only when it has the
right type and lies in a plausible range; anything else is *missing* for that path:

- numbers must be int or float (never bool), finite, and inside the path's range: pack voltage
  (0, 100] V, cell voltage (0, 5] V, current and limits |I| < 5000 A, SoC 0..100 %, installed
  capacity 1..100000 Ah, consumed Ah <= 0, temperature -50..120 degC. A pack at 0 V is a broken
  reading, not a flat pack, so voltage ranges exclude 0. No pack of a bank holds less than 1 Ah: a
  smaller capacity is a wrong unit or garbage, and taken as true it would give the pack a share of
  the bank current near 0 (the share limits divide by it), so it is treated as unknown.
- counts, flags and alarm levels must be integral numbers in range (1.0 is accepted as 1; bools
  are accepted for 0/1 flags only, since a CAN driver may publish them that way).
- texts must be str.
`None` (an invalid value on the wire) is simply missing and is no problem to report: serialbattery
publishes None for absent sensors. Garbage (wrong type, NaN, out of range) is reported so the
engine can log it once per pack and path.

Online/offline state machine
----------------------------
One `PackTracker` per known pack id. Each tick the engine works out whether the pack is healthy
(`fault_of`, then `stale_verdict`) and feeds one `Health` event into the tracker:

- FAULT:   the pack must not be used (reason text attached),
- FRESH:   the pack is healthy but has not yet been healthy for `readmit_after` seconds,
- SETTLED: the pack has been healthy continuously for at least `readmit_after` seconds.

    state \\ event  | FAULT    | FRESH        | SETTLED
    ---------------+----------+--------------+--------
    NEW            | OFFLINE  | ONLINE       | ONLINE
    ONLINE         | OFFLINE  | ONLINE       | ONLINE
    OFFLINE        | OFFLINE  | READMITTING  | ONLINE
    READMITTING    | OFFLINE  | READMITTING  | ONLINE

NEW is a pack not yet judged in this process. Its first admission is immediate so a restarted
daemon publishes a valid aggregate at once; only a pack that has been offline in this process waits
`readmit_after` seconds of continuously healthy data (a flapping link must not flap the limits).

A pack is unhealthy (FAULT) when, checked in this order:
1. its service is not on the bus (gone, or a known pack not seen yet),
2. it reports its own link loss: /System/NrOfModulesOnline == 0 (serialbattery after 10 s of failed
   polls; victron-contract §4.1),
3. /Dc/0/Voltage, /Dc/0/Current, /Info/MaxChargeVoltage, /Info/MaxChargeCurrent or
   /Info/MaxDischargeCurrent is missing (serialbattery's link loss makes V and I invalid but keeps
   the old limits, so both checks are needed),
4. its data is proven frozen (`stale_verdict`).

Quiet is not dead: velib publishes only changes, so a healthy pack at rest, or one that blocks the
direction the bank current flows in (its FET is open, it carries 0 A), may publish nothing for
minutes. Silence alone therefore never makes a pack stale; evidence does:
- a pack that reports current of its own (|I| >= `idle_current`) jitters every second, so no value
  changing for `stale_after` seconds proves it frozen;
- a pack that reports ~0 A is frozen when, for `stale_after` seconds without any change of its
  values, the bank current (the configured current source, else the sum of the online packs) was
  large enough that its capacity share is at least `idle_current`, in a direction it does not
  block: a live pack would have reported that current;
- a driver that hangs answers nothing: the daemon probes a pack quiet for `stale_after_idle`
  seconds with one GetValue, and one that got no answer is stale (`ServiceReading.unresponsive`).
A pack whose data froze while its driver still answers is found when the bank current next flows;
until then its data is what a live pack's would be, and its last limits and blocks count anyway.
A stale verdict sticks until a value of the pack changes: a frozen pack must not come back just
because the bank went to rest and the evidence ended.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

@dataclass(frozen=True)
class ServiceReading:
    """One battery service as the monitor sees it right now."""

    service: str  # well-known name
    values: Mapping[str, Any]  # path -> raw unwrapped value (None = invalid; may be garbage)
    last_change: float  # monotonic time any value last changed
    appeared_at: float  # monotonic time the service appeared
    # path -> monotonic time its value last changed, for every path in `values`; lets the engine
    # parse only the values that changed (`revalidate`). Empty = unknown: parse everything.
    changed_at: Mapping[str, float] = field(default_factory=dict)
    # The daemon's liveness probe got no answer since the last change: the driver hangs.
    unresponsive: bool = False


# ---- paths ------------------------------------------------------------------------------------

PRODUCT_NAME = "/ProductName"
SERIAL = "/Serial"
CUSTOM_NAME = "/CustomName"
VOLTAGE = "/Dc/0/Voltage"
CURRENT = "/Dc/0/Current"
POWER = "/Dc/0/Power"
TEMPERATURE = "/Dc/0/Temperature"
SOC = "/Soc"
CAPACITY = "/Capacity"
INSTALLED_CAPACITY = "/InstalledCapacity"
CONSUMED_AH = "/ConsumedAmphours"
CVL = "/Info/MaxChargeVoltage"
CCL = "/Info/MaxChargeCurrent"
DCL = "/Info/MaxDischargeCurrent"
BATTERY_LOW_VOLTAGE = "/Info/BatteryLowVoltage"
CHARGE_MODE = "/Info/ChargeMode"
ALLOW_CHARGE = "/Io/AllowToCharge"
ALLOW_DISCHARGE = "/Io/AllowToDischarge"
ALLOW_BALANCE = "/Io/AllowToBalance"
MODULES_ONLINE = "/System/NrOfModulesOnline"
BLOCKING_CHARGE = "/System/NrOfModulesBlockingCharge"
BLOCKING_DISCHARGE = "/System/NrOfModulesBlockingDischarge"
CELLS_PER_BATTERY = "/System/NrOfCellsPerBattery"
MIN_CELL_VOLTAGE = "/System/MinCellVoltage"
MAX_CELL_VOLTAGE = "/System/MaxCellVoltage"
MIN_VOLTAGE_CELL_ID = "/System/MinVoltageCellId"
MAX_VOLTAGE_CELL_ID = "/System/MaxVoltageCellId"
MIN_CELL_TEMPERATURE = "/System/MinCellTemperature"
MAX_CELL_TEMPERATURE = "/System/MaxCellTemperature"
MIN_TEMPERATURE_CELL_ID = "/System/MinTemperatureCellId"
MAX_TEMPERATURE_CELL_ID = "/System/MaxTemperatureCellId"
VOLTAGES_SUM = "/Voltages/Sum"
BALANCING = "/Balancing"

ALARM_NAMES = (
    "LowVoltage", "HighVoltage", "LowCellVoltage", "HighCellVoltage", "LowSoc", "StateOfHealth",
    "HighChargeCurrent", "HighDischargeCurrent", "CellImbalance", "InternalFailure",
    "HighChargeTemperature", "LowChargeTemperature", "HighTemperature", "LowTemperature",
    "BmsCable", "HighInternalTemperature", "FuseBlown",
)
ALARM_PATHS = tuple(f"/Alarms/{name}" for name in ALARM_NAMES)
BMS_CABLE = "/Alarms/BmsCable"
INTERNAL_FAILURE = "/Alarms/InternalFailure"

# Lifetime counters and extremes of each pack; the bank's value is their sum, min or max. Counters
# that move every second under load (TotalAhDrawn, TimeSinceLastFullCharge) are not read: each
# would add a signal per pack per second in and one per second out, for a page a person reads.
HISTORY_SUM = ("/History/ChargedEnergy", "/History/DischargedEnergy")
HISTORY_MIN = ("/History/MinimumVoltage", "/History/MinimumCellVoltage",
               "/History/MinimumTemperature")
HISTORY_MAX = ("/History/MaximumVoltage", "/History/MaximumCellVoltage",
               "/History/MaximumTemperature")
HISTORY_PATHS = HISTORY_SUM + HISTORY_MIN + HISTORY_MAX

CELL_PREFIX = "/Voltages/Cell"
MAX_CELLS = 32  # serialbattery publishes /Voltages/Cell1..32 at most
CELL_PATHS = tuple(f"{CELL_PREFIX}{n}" for n in range(1, MAX_CELLS + 1))

# ---- validation ---------------------------------------------------------------------------------


class Kind(enum.Enum):
    NUMBER = "number"
    INTEGER = "integer"
    FLAG = "flag"
    TEXT = "text"


@dataclass(frozen=True)
class Rule:
    kind: Kind
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # the low bound itself is not plausible (0 V)
    high_open: bool = False  # the high bound itself is not plausible (5000 A)

    def parse(self, raw: Any) -> tuple[Any, str | None]:
        """(value, None) when usable; (None, None) when invalid on the wire; (None, why) for garbage."""
        if raw is None:
            return None, None
        kind = self.kind
        if kind is Kind.TEXT:
            if isinstance(raw, str):
                return raw[:PACK_TEXT_MAX], None
            return None, f"{_show(raw)} is not text"
        if type(raw) is float or type(raw) is int:  # the usual case, checked first for speed
            number = float(raw)
        elif isinstance(raw, bool):
            if kind is Kind.FLAG:
                return int(raw), None
            return None, f"{_show(raw)} is not a number"
        elif isinstance(raw, (int, float)):
            number = float(raw)
        else:
            return None, f"{_show(raw)} is not a number"
        if not math.isfinite(number):
            return None, f"{_show(raw)} is not a finite number"
        if kind is not Kind.NUMBER and not number.is_integer():
            return None, f"{_show(raw)} is not a whole number"
        if ((number <= self.low if self.low_open else number < self.low)
                or (number >= self.high if self.high_open else number > self.high)):
            return None, f"{_show(raw)} is outside {self._range()}"
        return (number, None) if kind is Kind.NUMBER else (int(number), None)

    def _range(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


_PACK_V = Rule(Kind.NUMBER, 0.0, 100.0, low_open=True)
_CELL_V = Rule(Kind.NUMBER, 0.0, 5.0, low_open=True)
_AMPS = Rule(Kind.NUMBER, -5000.0, 5000.0, low_open=True, high_open=True)
_LIMIT_A = Rule(Kind.NUMBER, 0.0, 5000.0, high_open=True)
_TEMP = Rule(Kind.NUMBER, -50.0, 120.0)
_AH = Rule(Kind.NUMBER, 0.0, 100_000.0)
_FLAG = Rule(Kind.FLAG, 0, 1)
_COUNT = Rule(Kind.INTEGER, 0, 1000)
_TEXT = Rule(Kind.TEXT)
# Pack texts (ids, names, cell ids, charge modes) are a few words; what is beyond this is cut on
# input, so no pack can make the aggregate republish, persist or log kilobytes of text.
PACK_TEXT_MAX = 64

RULES: dict[str, Rule] = {
    PRODUCT_NAME: _TEXT,
    SERIAL: _TEXT,
    CUSTOM_NAME: _TEXT,
    VOLTAGE: _PACK_V,
    CURRENT: _AMPS,
    TEMPERATURE: _TEMP,
    SOC: Rule(Kind.NUMBER, 0.0, 100.0),
    CAPACITY: _AH,
    INSTALLED_CAPACITY: Rule(Kind.NUMBER, 1.0, 100_000.0),
    CONSUMED_AH: Rule(Kind.NUMBER, -100_000.0, 0.0),
    CVL: _PACK_V,
    CCL: _LIMIT_A,
    DCL: _LIMIT_A,
    BATTERY_LOW_VOLTAGE: _PACK_V,
    CHARGE_MODE: _TEXT,
    ALLOW_CHARGE: _FLAG,
    ALLOW_DISCHARGE: _FLAG,
    ALLOW_BALANCE: _FLAG,
    MODULES_ONLINE: _COUNT,
    BLOCKING_CHARGE: _COUNT,
    BLOCKING_DISCHARGE: _COUNT,
    CELLS_PER_BATTERY: Rule(Kind.INTEGER, 1, 64),
    MIN_CELL_VOLTAGE: _CELL_V,
    MAX_CELL_VOLTAGE: _CELL_V,
    MIN_VOLTAGE_CELL_ID: _TEXT,
    MAX_VOLTAGE_CELL_ID: _TEXT,
    MIN_CELL_TEMPERATURE: _TEMP,
    MAX_CELL_TEMPERATURE: _TEMP,
    MIN_TEMPERATURE_CELL_ID: _TEXT,
    MAX_TEMPERATURE_CELL_ID: _TEXT,
    VOLTAGES_SUM: _PACK_V,
    BALANCING: _COUNT,
    **{path: Rule(Kind.INTEGER, 0, 2) for path in ALARM_PATHS},
    "/History/ChargedEnergy": Rule(Kind.NUMBER, 0.0, 1e7),  # kWh
    "/History/DischargedEnergy": Rule(Kind.NUMBER, 0.0, 1e7),
    "/History/MinimumVoltage": _PACK_V,
    "/History/MaximumVoltage": _PACK_V,
    "/History/MinimumCellVoltage": _CELL_V,
    "/History/MaximumCellVoltage": _CELL_V,
    "/History/MinimumTemperature": _TEMP,
    "/History/MaximumTemperature": _TEMP,
}

_RULES_WITH_CELLS: dict[str, Rule] = {**RULES, **{path: _CELL_V for path in CELL_PATHS}}

# Every pack path the engine reads; the monitor subscribes to these only (see `pack_paths`).
# /Dc/0/Power is not among them: serialbattery publishes exactly V x I, which the engine computes
# itself (PackSnapshot.power), and it would be one more change per pack per second to process.
# Nor are /Capacity and /ConsumedAmphours: they say what /Soc and /InstalledCapacity say
# (serialbattery computes them from the SoC, or copies the BMS's own remaining Ah that its SoC
# comes from), the SoC strategy derives them when they are absent, and each would cost a match
# rule per pack: 32 packs must stay within the bus's per-connection limit of 512.
# /History/* is read only when asked for: it needs a match rule of its own per pack.
PACK_PATHS: frozenset[str] = (frozenset(RULES) - frozenset(HISTORY_PATHS)
                              - {CAPACITY, CONSUMED_AH})

# A change of one of these must trigger an immediate (debounced) tick.
SAFETY_PATHS: frozenset[str] = frozenset({
    CVL, CCL, DCL, ALLOW_CHARGE, ALLOW_DISCHARGE, BLOCKING_CHARGE, BLOCKING_DISCHARGE,
    MAX_CELL_VOLTAGE, MIN_CELL_VOLTAGE, MODULES_ONLINE, *ALARM_PATHS,
})

# Voltage and current change every second on every pack, so they are not safety paths; only their
# turning invalid (serialbattery's link loss) is urgent, see `needs_urgent_tick`.
_LINK_PATHS = (VOLTAGE, CURRENT)


def pack_paths(cell_voltages: bool, history: bool = False) -> frozenset[str]:
    """The pack paths to subscribe to; per-cell voltages only when they are published, /History
    only when the bank's history is."""
    paths = PACK_PATHS | frozenset(HISTORY_PATHS) if history else PACK_PATHS
    return paths | frozenset(CELL_PATHS) if cell_voltages else paths


def needs_urgent_tick(changed: Mapping[str, Any]) -> bool:
    """True when a pack's changed values must be acted on at once rather than at the next tick."""
    if not SAFETY_PATHS.isdisjoint(changed):
        return True
    return any(path in changed and changed[path] is None for path in _LINK_PATHS)


@dataclass(frozen=True)
class Validated:
    values: Mapping[str, Any]  # path -> usable typed value; missing paths are absent
    problems: Mapping[str, str]  # path -> why its raw value was rejected (None is not a problem)
    # What `revalidate` needs to parse only the changes next time: the change stamps of the raw
    # values parsed and the newest of them; None when the result cannot be reused.
    stamps: Mapping[str, float] | None = None
    newest: float = -math.inf
    cell_voltages: bool = False


def validate(values: Any, cell_voltages: bool = False) -> Validated:
    """Keep only usable values. Never raises, whatever `values` holds."""
    clean: dict[str, Any] = {}
    problems: dict[str, str] = {}
    if not isinstance(values, Mapping):
        return Validated(clean, problems)
    rules = _RULES_WITH_CELLS if cell_voltages else RULES
    try:
        for path, raw in values.items():
            rule = rules.get(path)
            if rule is None:
                continue
            value, problem = rule.parse(raw)
            if problem is not None:
                problems[path] = problem
            elif value is not None:
                clean[path] = value
    except Exception:  # noqa: BLE001 - a broken mapping: keep what was read, the rest is missing
        pass
    return Validated(clean, problems, cell_voltages=cell_voltages)


def revalidate(previous: Validated | None, values: Any, changed_at: Any,
               cell_voltages: bool = False) -> Validated:
    """What `validate(values, cell_voltages)` gives, re-parsing only the values that changed.

    `changed_at` holds each path's monotonic change time (the monitor's `RemoteService.changed_at`);
    `previous` must be this function's result for the same appearance of the same service (the
    caller keys it by name and appearance time). A path is parsed again when its stamp differs from
    the one parsed before, or is not older than the newest stamp parsed before: a change within
    the same clock tick as an earlier one keeps its stamp, so that stamp proves nothing. Everything
    is parsed again when paths came or went, when some value has no stamp, or when the stamps are
    not finite numbers. Never raises.
    """
    if not isinstance(changed_at, Mapping) or not changed_at or not isinstance(values, Mapping):
        return validate(values, cell_voltages)
    try:
        if values.keys() != changed_at.keys():
            return validate(values, cell_voltages)
        newest = max(changed_at.values())
        if not isinstance(newest, (int, float)) or not math.isfinite(newest):
            return validate(values, cell_voltages)
        old = previous.stamps if previous is not None else None
        if (old is None or previous is None or previous.cell_voltages != cell_voltages
                or old.keys() != changed_at.keys()):
            full = validate(values, cell_voltages)
            return Validated(full.values, full.problems, dict(changed_at), newest, cell_voltages)
        mark = previous.newest
        dirty = [path for path, stamp in changed_at.items() if stamp >= mark or stamp != old[path]]
        rules = _RULES_WITH_CELLS if cell_voltages else RULES
        clean = dict(previous.values)
        problems = dict(previous.problems)
        for path in dirty:
            clean.pop(path, None)
            problems.pop(path, None)
            rule = rules.get(path)
            if rule is None:
                continue
            value, problem = rule.parse(values[path])
            if problem is not None:
                problems[path] = problem
            elif value is not None:
                clean[path] = value
        return Validated(clean, problems, dict(changed_at), newest, cell_voltages)
    except Exception:  # noqa: BLE001 - broken mappings or stamps: the full parse never raises
        return validate(values, cell_voltages)


# ---- typed snapshot -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PackSnapshot:
    """One pack's validated values at one tick; None = missing."""

    id: str
    name: str
    service: str
    voltage: float | None = None
    current: float | None = None
    power: float | None = None  # voltage x current, as serialbattery computes its /Dc/0/Power
    temperature: float | None = None
    soc: float | None = None
    capacity: float | None = None  # remaining Ah
    installed_capacity: float | None = None
    consumed_ah: float | None = None
    cvl: float | None = None
    ccl: float | None = None
    dcl: float | None = None
    battery_low_voltage: float | None = None
    charge_mode: str | None = None
    allow_charge: int | None = None
    allow_discharge: int | None = None
    allow_balance: int | None = None
    modules_online: int | None = None
    blocking_charge: int | None = None
    blocking_discharge: int | None = None
    cells: int | None = None
    min_cell_voltage: float | None = None
    max_cell_voltage: float | None = None
    min_voltage_cell_id: str | None = None
    max_voltage_cell_id: str | None = None
    min_cell_temperature: float | None = None
    max_cell_temperature: float | None = None
    min_temperature_cell_id: str | None = None
    max_temperature_cell_id: str | None = None
    voltages_sum: float | None = None
    balancing: int | None = None
    alarms: Mapping[str, int] = field(default_factory=dict)  # alarm path -> level 0/1/2
    history: Mapping[str, float] = field(default_factory=dict)  # /History/* path -> value
    cell_voltages: Mapping[int, float] = field(default_factory=dict)  # cell number -> V

    @classmethod
    def build(cls, pack_id: str, name: str, service: str, values: Mapping[str, Any]) -> PackSnapshot:
        """From `Validated.values` (already typed and range-checked)."""
        get = values.get
        voltage, current = get(VOLTAGE), get(CURRENT)
        return cls(
            id=pack_id, name=name, service=service,
            voltage=voltage, current=current,
            power=voltage * current if voltage is not None and current is not None else None,
            temperature=get(TEMPERATURE), soc=get(SOC), capacity=get(CAPACITY),
            installed_capacity=get(INSTALLED_CAPACITY), consumed_ah=get(CONSUMED_AH),
            cvl=get(CVL), ccl=get(CCL), dcl=get(DCL), battery_low_voltage=get(BATTERY_LOW_VOLTAGE),
            charge_mode=get(CHARGE_MODE), allow_charge=get(ALLOW_CHARGE),
            allow_discharge=get(ALLOW_DISCHARGE), allow_balance=get(ALLOW_BALANCE),
            modules_online=get(MODULES_ONLINE), blocking_charge=get(BLOCKING_CHARGE),
            blocking_discharge=get(BLOCKING_DISCHARGE), cells=get(CELLS_PER_BATTERY),
            min_cell_voltage=get(MIN_CELL_VOLTAGE), max_cell_voltage=get(MAX_CELL_VOLTAGE),
            min_voltage_cell_id=get(MIN_VOLTAGE_CELL_ID), max_voltage_cell_id=get(MAX_VOLTAGE_CELL_ID),
            min_cell_temperature=get(MIN_CELL_TEMPERATURE),
            max_cell_temperature=get(MAX_CELL_TEMPERATURE),
            min_temperature_cell_id=get(MIN_TEMPERATURE_CELL_ID),
            max_temperature_cell_id=get(MAX_TEMPERATURE_CELL_ID),
            voltages_sum=get(VOLTAGES_SUM), balancing=get(BALANCING),
            alarms={path: values[path] for path in ALARM_PATHS if path in values},
            history={path: values[path] for path in HISTORY_PATHS if path in values},
            cell_voltages={n: values[path] for n, path in enumerate(CELL_PATHS, 1) if path in values},
        )

    def charge_block(self) -> str | None:
        """Why this pack forbids charging the bank, or None. Missing flags are no verdict."""
        return _block(self.ccl, "CCL 0", self.allow_charge, "AllowToCharge 0",
                      self.blocking_charge, "blocking charge")

    def discharge_block(self) -> str | None:
        return _block(self.dcl, "DCL 0", self.allow_discharge, "AllowToDischarge 0",
                      self.blocking_discharge, "blocking discharge")


def _block(limit: float | None, zero: str, allow: int | None, forbidden: str,
           blocking: int | None, blocks: str) -> str | None:
    if limit is not None and limit <= 0.0:
        return zero
    if allow == 0:
        return forbidden
    if blocking is not None and blocking > 0:
        return blocks
    return None


# ---- freshness and the online/offline state machine ---------------------------------------------


class PackState(enum.Enum):
    NEW = "new"
    ONLINE = "online"
    OFFLINE = "offline"
    READMITTING = "readmitting"


class Health(enum.Enum):
    FAULT = "fault"
    FRESH = "fresh"
    SETTLED = "settled"


TRANSITIONS: dict[tuple[PackState, Health], PackState] = {
    (PackState.NEW, Health.FAULT): PackState.OFFLINE,
    (PackState.NEW, Health.FRESH): PackState.ONLINE,
    (PackState.NEW, Health.SETTLED): PackState.ONLINE,
    (PackState.ONLINE, Health.FAULT): PackState.OFFLINE,
    (PackState.ONLINE, Health.FRESH): PackState.ONLINE,
    (PackState.ONLINE, Health.SETTLED): PackState.ONLINE,
    (PackState.OFFLINE, Health.FAULT): PackState.OFFLINE,
    (PackState.OFFLINE, Health.FRESH): PackState.READMITTING,
    (PackState.OFFLINE, Health.SETTLED): PackState.ONLINE,
    (PackState.READMITTING, Health.FAULT): PackState.OFFLINE,
    (PackState.READMITTING, Health.FRESH): PackState.READMITTING,
    (PackState.READMITTING, Health.SETTLED): PackState.ONLINE,
}


@dataclass
class PackTracker:
    """Online/offline state of one pack id (see the table in the module header)."""

    id: str
    state: PackState = PackState.NEW
    reason: str | None = "not seen yet"  # why the pack is not online; None while online
    healthy_since: float | None = None
    since: float | None = None  # when the present state was entered
    # Liveness evidence (module header): since when it has held without a break, and the change
    # stamp of the pack's data when it was ruled stale (the verdict sticks until that moves).
    evidence_since: float | None = None
    stale_stamp: float | None = None
    stale_reason: str | None = None

    @property
    def online(self) -> bool:
        return self.state is PackState.ONLINE

    def evidence_for(self, now: float, evidence: str | None, last_change: float) -> float:
        """Seconds `evidence` has held without a break and without a change of the pack's data."""
        if evidence is None:
            self.evidence_since = None
            return 0.0
        if self.evidence_since is None:
            self.evidence_since = now
        return max(0.0, now - max(self.evidence_since, last_change))

    def staleness(self, verdict: str | None, stamp: float) -> str | None:
        """The stale verdict to use: a new one, or the old one while the data has not changed."""
        if verdict is not None:
            self.stale_stamp, self.stale_reason = stamp, verdict
        elif self.stale_stamp is not None and stamp == self.stale_stamp:
            return self.stale_reason
        else:
            self.stale_stamp = self.stale_reason = None
        return verdict

    def update(self, now: float, fault: str | None, readmit_after: float) -> PackState:
        """Feed one tick's verdict; returns the state before it (compare with `.state`)."""
        if fault is not None:
            self.healthy_since = None
            event = Health.FAULT
        else:
            if self.healthy_since is None:
                self.healthy_since = now
            settled = now - self.healthy_since >= readmit_after
            event = Health.SETTLED if settled else Health.FRESH
        before = self.state
        self.state = TRANSITIONS[(before, event)]
        if self.state is not before:
            self.since = now
        self.reason = None if self.state is PackState.ONLINE else (fault or "waiting for re-admission")
        return before


def is_current_flowing(current: float | None, idle_current: float) -> bool:
    return current is not None and abs(current) >= idle_current


def expected_current(snapshot: PackSnapshot, bank_current: float | None, share: float,
                     idle_current: float) -> str | None:
    """What a live pack reporting ~0 A should be showing instead (module header), or None.

    `share` is the pack's part of the bank current (its capacity share). None when the pack reports
    current of its own (the `stale_after` rule covers it), when its share of the bank current is
    below `idle_current`, or when the pack blocks the direction the bank current flows in.
    """
    if bank_current is None or is_current_flowing(snapshot.current, idle_current):
        return None
    if abs(bank_current) * share < idle_current:
        return None
    charging = bank_current > 0.0
    if (snapshot.charge_block() if charging else snapshot.discharge_block()) is not None:
        return None
    return (f"the bank carried {abs(bank_current):.1f} A {'charging' if charging else 'discharging'}, "
            "which it does not block")


def stale_verdict(snapshot: PackSnapshot, age: float, evidence_for: float, evidence: str | None,
                  unresponsive: bool, stale_after: float, idle_current: float) -> str | None:
    """Why the pack's data is proven frozen, or None; see "Quiet is not dead" in the module header.

    `age`: seconds since any value of the pack changed; `evidence_for`: seconds, within `age`, that
    `evidence` (from `expected_current`) has held without a break.
    """
    current = snapshot.current
    if is_current_flowing(current, idle_current) and age > stale_after:
        return (f"no value changed for {age:.1f} s while it reports {current:.1f} A "
                f"(limit {stale_after:g} s)")
    if evidence is not None and evidence_for > stale_after:
        # a pack whose link is lost reports no current at all (it is offline for that anyway)
        reports = f"{current:.1f} A" if current is not None else "no valid current"
        return (f"no value changed for {age:.1f} s while {evidence} and it reports "
                f"{reports} (limit {stale_after:g} s)")
    if unresponsive:
        return f"no value changed for {age:.1f} s and its driver did not answer a probe"
    return None


def data_age(now: float, last_change: Any, appeared_at: Any) -> float | None:
    """Seconds since the pack's values last changed (or it appeared); None when unknowable."""
    stamps = [t for t in (last_change, appeared_at)
              if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)]
    if not stamps:
        return None
    return max(0.0, now - max(stamps))


_REQUIRED = (
    ("voltage", "/Dc/0/Voltage"),
    ("current", "/Dc/0/Current"),
    ("cvl", "CVL (/Info/MaxChargeVoltage)"),
    ("ccl", "CCL (/Info/MaxChargeCurrent)"),
    ("dcl", "DCL (/Info/MaxDischargeCurrent)"),
)


def fault_of(snapshot: PackSnapshot | None, age: float | None, seen_before: bool) -> str | None:
    """Why the pack must not be used right now (checks 1-3 of the module header), or None; only
    then is `stale_verdict` asked (check 4)."""
    if snapshot is None:
        return "service gone" if seen_before else "known pack not present"
    if snapshot.modules_online == 0:
        return "BMS reports its link lost (NrOfModulesOnline 0)"
    for attr, label in _REQUIRED:
        if getattr(snapshot, attr) is None:
            return f"no valid {label}"
    if age is None:
        return "no receive time"
    return None
