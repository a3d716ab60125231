"""Validation of raw pack values: a value is usable only with the right type in a plausible range.

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
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    CELL_PATHS,
    CELLS_PER_BATTERY,
    CHARGE_MODE,
    CONSUMED_AH,
    CURRENT,
    CUSTOM_NAME,
    CVL,
    DCL,
    HISTORY_PATHS,
    INSTALLED_CAPACITY,
    MAX_CELL_TEMPERATURE,
    MAX_CELL_VOLTAGE,
    MAX_TEMPERATURE_CELL_ID,
    MAX_VOLTAGE_CELL_ID,
    MIN_CELL_TEMPERATURE,
    MIN_CELL_VOLTAGE,
    MIN_TEMPERATURE_CELL_ID,
    MIN_VOLTAGE_CELL_ID,
    MODULES_ONLINE,
    PRODUCT_NAME,
    SERIAL,
    SOC,
    TEMPERATURE,
    VOLTAGE,
    VOLTAGES_SUM,
)


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


def pack_paths(cell_voltages: bool, history: bool = False) -> frozenset[str]:
    """The pack paths to subscribe to; per-cell voltages only when they are published, /History
    only when the bank's history is."""
    paths = PACK_PATHS | frozenset(HISTORY_PATHS) if history else PACK_PATHS
    return paths | frozenset(CELL_PATHS) if cell_voltages else paths



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

