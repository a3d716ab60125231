"""Convert the reference system's config.ini and state files (dbus-aggregate-batteries 4.x).

Rules:

- The reference reads its config.default.ini, then the user's config.ini over it. The conversion
  does the same with the reference's defaults built in (``REFERENCE_DEFAULTS``), so a key the user
  never set still converts to the value the reference actually used.
- Every reference key has one rule, with one of three outcomes: mapped to aggbatt keys (sometimes
  with a note on a difference), not needed (aggbatt does it without a setting), or not mapped
  (no equivalent; the reason says what to do instead). Keys the reference does not know are
  reported as unknown. A value that cannot be parsed is not mapped and says why.
- The TOML is written only when it validates with ``aggbatt.config``: a mapped value aggbatt
  rejects is dropped and reported with the validator's message, so the output always loads.
- State: ``storedvalue_charge`` (own charge in Ah, ``-1`` = "start from the BMS SoCs") becomes
  ``soc.json``, stamped with the file's modification time, because that is when the reference
  counted it. The reference saved no capacity: the one the user gives is stored with the charge
  (so the SoC is known from the first pack online), else the counter waits for the whole bank;
  ``storedvalue_last_balancing`` (day of the year, 0 = never) becomes
  ``balancing.json`` with the most recent date of that day of the year that is not in the future.
- Nothing existing is overwritten without ``force``.
"""

from __future__ import annotations

import configparser
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aggbatt.core.strategies.balancing import STATE_VERSION as BALANCING_VERSION
from aggbatt.core.strategies.coulomb import STATE_FILE as SOC_FILE
from aggbatt.core.strategies.coulomb import STATE_VERSION as SOC_VERSION
from aggbatt.core.strategies.own_charge import BALANCING_FILE
from aggbatt.daemon.persist import write_json_atomic
from aggbatt.errors import AggbattError

CHARGE_FILES = ("storedvalue_charge", "charge")
BALANCING_FILES = ("storedvalue_last_balancing", "last_balancing")

# Every key of the reference's config.default.ini (4.x) with its default value, in file order.
REFERENCE_DEFAULTS: dict[str, str] = {
    "NR_OF_BATTERIES": "-1",
    "NR_OF_CELLS_PER_BATTERY": "-1",
    "NR_OF_MPPTS": "-1",
    "BATTERY_SERVICE_NAME": "com.victronenergy.battery",
    "DCLOAD_SERVICE_NAME": "com.victronenergy.dcload",
    "BATTERY_PRODUCT_NAME_PATH": "/ProductName",
    "BATTERY_PRODUCT_NAME": "SerialBattery",
    "BATTERY_INSTANCE_NAME_PATH": "/Serial",
    "MULTI_KEYWORD": "com.victronenergy.vebus",
    "MPPT_KEYWORD": "com.victronenergy.solarcharger",
    "SMARTSHUNT_NAME_KEYWORD": "SmartShunt",
    "SMARTSHUNT_INSTANCE_NAME_PATH": "/CustomName",
    "SEARCH_TRIALS": "10",
    "READ_TRIALS": "10",
    "UPDATE_INTERVAL_FIND_DEVICES": "1",
    "UPDATE_INTERVAL_DATA": "1",
    "TIME_BEFORE_RESTART": "15",
    "CAN_batteries": "False",
    "CURRENT_FROM_VICTRON": "False",
    "USE_SMARTSHUNTS": "False",
    "INVERT_SMARTSHUNTS": "False",
    "IGNORE_SMARTSHUNT_ABSENCE": "False",
    "SMARTSHUNT_AS_BATTERY_CURRENT": "False",
    "OWN_SOC": "False",
    "ZERO_SOC": "False",
    "MAX_CELL_VOLTAGE_SOC_FULL": "3.45",
    "MIN_CELL_VOLTAGE_SOC_EMPTY": "2.90",
    "OWN_SOC_FULL_VOLTAGE": "0",
    "OWN_SOC_FULL_CELL_MEDIAN_VOLTAGE": "0",
    "CHARGE_SAVE_PRECISION": "0.0025",
    "OWN_CHARGE_PARAMETERS": "False",
    "BALANCING_VOLTAGE": "3.40",
    "BALANCING_REPETITION": "10",
    "CHARGE_VOLTAGE_LIST": "3.55, 3.50, 3.50, 3.45, 3.40, 3.40, 3.40, 3.40, 3.45, 3.50, 3.50, 3.55",
    "MAX_CELL_VOLTAGE": "3.45",
    "MIN_CELL_VOLTAGE": "2.90",
    "MIN_CELL_HYSTERESIS": "0.1",
    "CELL_DIFF_MAX": "0.025",
    "BATTERY_EFFICIENCY": "0.98",
    "MAX_CHARGE_CURRENT": "200",
    "MAX_DISCHARGE_CURRENT": "200",
    "CELL_CHARGE_LIMITING_VOLTAGE": "",
    "CELL_CHARGE_LIMITED_CURRENT": "0.2, 1, 1, 0.1, 0",
    "CELL_DISCHARGE_LIMITING_VOLTAGE": "",
    "CELL_DISCHARGE_LIMITED_CURRENT": "0, 0.05, 1",
    "AGGREGATE_CHARGE_MODE": "False",
    "KEEP_MAX_CVL": "False",
    "SEND_CELL_VOLTAGES": "0",
    "LOGGING": "INFO",
    "LOG_PERIOD": "300",
}

# Tables in the order of config/default.toml, for a readable output file.
_TABLES = ("service", "discovery", "freshness", "aggregation", "safety", "soc", "current",
           "charge", "charge.passthrough", "charge.own", "feedin", "logging")


class MigrationError(AggbattError):
    """The input cannot be converted at all (unreadable file, output exists, ...)."""


@dataclass(frozen=True)
class Note:
    key: str
    value: str
    message: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value or '(empty)'}: {self.message}"


@dataclass
class Migration:
    """The outcome of converting one config.ini."""

    settings: dict[str, Any] = field(default_factory=dict)  # dotted aggbatt key -> value
    origin: dict[str, str] = field(default_factory=dict)  # dotted aggbatt key -> reference key
    not_mapped: list[Note] = field(default_factory=list)
    not_needed: list[Note] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    effective: dict[str, str] = field(default_factory=dict)  # reference key -> raw value

    def set(self, ref_key: str, dotted: str, value: Any) -> None:
        self.settings[dotted] = value
        self.origin[dotted] = ref_key

    def raw(self, ref_key: str) -> str:
        return self.effective.get(ref_key, REFERENCE_DEFAULTS[ref_key])


Rule = Callable[[Migration, str, str], None]


# ----- value parsing (ValueError says what was expected) -------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _bool(raw: str) -> bool:
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("is not True or False")


def _float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


def _int(raw: str) -> int:
    value = _float(raw)
    if value != int(value):
        raise ValueError("is not a whole number")
    return int(value)


def _items(raw: str) -> list[str]:
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def _floats(raw: str) -> list[float]:
    return [_float(item) for item in _items(raw)]


def _shunt_ref(item: str) -> int | str:
    if len(item) >= 2 and item[0] == item[-1] and item[0] in "'\"":
        return item[1:-1]
    try:
        return _int(item)
    except ValueError:
        return item


# ----- rules ---------------------------------------------------------------------------------

def _to(dotted: str, parse: Callable[[str], Any]) -> Rule:
    def rule(m: Migration, key: str, raw: str) -> None:
        m.set(key, dotted, parse(raw))
    return rule


def _not_needed(reason: str) -> Rule:
    def rule(m: Migration, key: str, raw: str) -> None:
        m.not_needed.append(Note(key, raw, reason))
    return rule


def _fixed(reason: str) -> Rule:
    """aggbatt has the reference's default built in; another value has no equivalent."""
    def rule(m: Migration, key: str, raw: str) -> None:
        if raw.strip() == REFERENCE_DEFAULTS[key]:
            m.not_needed.append(Note(key, raw, reason))
        else:
            m.not_mapped.append(Note(key, raw, f"{reason}; another value cannot be configured"))
    return rule


def _expected_packs(m: Migration, key: str, raw: str) -> None:
    count = _int(raw)
    if count <= 0:
        m.not_mapped.append(Note(key, raw, "not set; aggbatt uses every pack it finds "
                                 "(discovery.expected_packs raises an alarm when fewer are online)"))
    else:
        m.set(key, "discovery.expected_packs", count)


def _product_name(m: Migration, key: str, raw: str) -> None:
    if not raw.strip():
        m.not_mapped.append(Note(key, raw, "an empty keyword matches every battery service; "
                                 "list the packs in discovery.include instead"))
    else:
        m.set(key, "discovery.product_name_contains", [raw.strip()])


def _multi_keyword(m: Migration, key: str, raw: str) -> None:
    if raw.strip() == REFERENCE_DEFAULTS[key]:
        m.not_needed.append(Note(key, raw, "aggbatt finds the Multi/Quattro (com.victronenergy.vebus) itself"))
    elif not raw.strip():
        m.not_mapped.append(Note(key, raw, "the reference left the Multi's current out; with "
                                 'current.source = "victron_devices" aggbatt always adds it: '
                                 "to measure with battery-mode SmartShunts alone set "
                                 "current.shunt_alone = true"))
    else:
        m.not_mapped.append(Note(key, raw, "aggbatt always uses com.victronenergy.vebus; "
                                 "another value cannot be configured"))


def _smartshunts(m: Migration, key: str, raw: str) -> None:
    text = raw.strip()
    if text.lower() in _TRUE | _FALSE:
        m.set(key, "current.all_shunts", _bool(text))
        m.set(key, "current.shunts", [])
        return
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError("is not True, False or a [list]")
    m.set(key, "current.shunts", [_shunt_ref(item) for item in _items(text)])
    m.set(key, "current.all_shunts", False)


def _invert_shunts(m: Migration, key: str, raw: str) -> None:
    inverted = _bool(raw)
    m.set(key, "current.dcload_sign", 1 if inverted else -1)
    if inverted:
        m.notes.append(Note(key, raw, "DC-meter shunts are now added (current.dcload_sign = 1); "
                            "battery-mode shunts are always added by aggbatt, the reference "
                            "subtracted them: check the bank current after the switch"))


def _shunt_absence(m: Migration, key: str, raw: str) -> None:
    if _bool(raw):
        m.set(key, "current.on_source_lost", "fallback")
    else:
        m.not_mapped.append(Note(key, raw, "the reference restarted itself until the shunt "
                                 "returned; aggbatt uses the BMS current meanwhile "
                                 '(current.on_source_lost = "fallback"); set "block" to stop '
                                 "charging and discharging instead"))


def _soc_strategy(m: Migration, key: str, raw: str) -> None:
    m.set(key, "soc.strategy", "coulomb_counter" if _bool(raw) else "bms_average")


def _own_mode(m: Migration) -> bool:
    try:
        return _bool(m.raw("OWN_CHARGE_PARAMETERS"))
    except ValueError:
        return False


def _soc_full(m: Migration, key: str, raw: str) -> None:
    m.set(key, "soc.full_cell_voltage", _float(raw))
    if _own_mode(m):
        m.notes.append(Note(key, raw, "with OWN_CHARGE_PARAMETERS the reference reset to 100 % "
                            "when the mean cell reached BALANCING_VOLTAGE; aggbatt resets when "
                            "the highest cell reaches soc.full_cell_voltage in both modes"))


def _soc_empty(m: Migration, key: str, raw: str) -> None:
    m.set(key, "soc.empty_cell_voltage", _float(raw))
    if _own_mode(m):
        m.notes.append(Note(key, raw, "with OWN_CHARGE_PARAMETERS the reference reset to 0 % at "
                            "MIN_CELL_VOLTAGE; aggbatt uses soc.empty_cell_voltage in both modes"))


def _zero_means_off(reason: str) -> Rule:
    def rule(m: Migration, key: str, raw: str) -> None:
        if _float(raw) == 0:
            m.not_needed.append(Note(key, raw, "0 = off"))
        else:
            m.not_mapped.append(Note(key, raw, reason))
    return rule


def _charge_strategy(m: Migration, key: str, raw: str) -> None:
    m.set(key, "charge.strategy", "own" if _bool(raw) else "passthrough")


def _aggregate_charge_mode(m: Migration, key: str, raw: str) -> None:
    if _bool(raw):
        m.set(key, "charge.passthrough.cvl_mode", "absorption_hold")
    else:
        m.not_needed.append(Note(key, raw, "off: KEEP_MAX_CVL decides the CVL arbitration"))


def _keep_max_cvl(m: Migration, key: str, raw: str) -> None:
    keep = _bool(raw)
    try:
        stateful = _bool(m.raw("AGGREGATE_CHARGE_MODE"))
    except ValueError:
        stateful = False
    if stateful:
        m.not_needed.append(Note(key, raw, "AGGREGATE_CHARGE_MODE = True decides (the reference "
                                 "ignores KEEP_MAX_CVL then)"))
        return
    m.set(key, "charge.passthrough.cvl_mode", "absorption_hold" if keep else "min")
    if keep:
        m.notes.append(Note(key, raw, "the reference took the highest pack CVL as soon as one "
                            'pack floated; "absorption_hold" keeps absorption until every pack '
                            "is done and always follows a pack that lowers its CVL"))


def _round(value: float) -> float:
    return round(value, 6)


def _charge_knots(m: Migration) -> list[float]:
    raw = m.raw("CELL_CHARGE_LIMITING_VOLTAGE")
    if raw.strip():
        return _floats(raw)
    low, bal, high = (_float(m.raw(k)) for k in ("MIN_CELL_VOLTAGE", "BALANCING_VOLTAGE",
                                                 "MAX_CELL_VOLTAGE"))
    return [_round(v) for v in (low, low + 0.05, bal - 0.1, bal, high)]


def _discharge_knots(m: Migration) -> list[float]:
    raw = m.raw("CELL_DISCHARGE_LIMITING_VOLTAGE")
    if raw.strip():
        return _floats(raw)
    low = _float(m.raw("MIN_CELL_VOLTAGE"))
    return [_round(v) for v in (low, low + 0.1, low + 0.2)]


def _table(knots: Callable[[Migration], list[float]], derived_from: str, factors_key: str,
           voltages_dotted: str, factors_dotted: str) -> Rule:
    """The voltage list (derived like the reference's when empty) with its factor list."""
    def rule(m: Migration, key: str, raw: str) -> None:
        volts = knots(m)
        try:
            factors = _floats(m.raw(factors_key))
        except ValueError as exc:
            raise ValueError(f"cannot be used: {factors_key} {exc}") from None
        if len(volts) != len(factors):
            raise ValueError(f"has {len(volts)} voltages but {factors_key} has {len(factors)} "
                             "factors (the reference refuses to start with that)")
        m.set(key, voltages_dotted, volts)
        m.set(factors_key, factors_dotted, factors)
        if not raw.strip():
            m.notes.append(Note(key, raw, f"derived from {derived_from} as the reference does: "
                                f"{', '.join(_show(v) for v in volts)} V"))
    return rule


def _factors_done_with(voltages_key: str) -> Rule:
    def rule(m: Migration, key: str, raw: str) -> None:
        if not any(origin == key for origin in m.origin.values()):
            m.not_mapped.append(Note(key, raw, f"not converted because {voltages_key} was not"))
    return rule


def _log_level(m: Migration, key: str, raw: str) -> None:
    levels = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "WARN": "warning",
              "ERROR": "error", "CRITICAL": "error"}
    level = levels.get(raw.strip().upper())
    if level is None:
        raise ValueError("is not DEBUG, INFO, WARNING or ERROR")
    m.set(key, "logging.level", level)


_NEVER_EXITS = ("aggbatt finds devices as they appear and never exits or restarts on missing "
                "data; a pack without fresh data is offline (see [freshness])")

RULES: dict[str, Rule] = {
    "NR_OF_BATTERIES": _expected_packs,
    "NR_OF_CELLS_PER_BATTERY": _not_needed(
        "aggbatt reads each pack's /System/NrOfCellsPerBattery; every voltage in its config is "
        "per cell, so packs may even differ"),
    "NR_OF_MPPTS": _not_needed("aggbatt uses every solar charger present"),
    "BATTERY_SERVICE_NAME": _fixed("aggbatt reads com.victronenergy.battery services"),
    "DCLOAD_SERVICE_NAME": _fixed("aggbatt reads com.victronenergy.dcload services"),
    "BATTERY_PRODUCT_NAME_PATH": _fixed("aggbatt matches /ProductName"),
    "BATTERY_PRODUCT_NAME": _product_name,
    "BATTERY_INSTANCE_NAME_PATH": _not_needed(
        "aggbatt names packs itself; discovery.include/exclude match the service name, /Serial "
        "or /CustomName"),
    "MULTI_KEYWORD": _multi_keyword,
    "MPPT_KEYWORD": _fixed("aggbatt finds solar chargers (com.victronenergy.solarcharger) itself"),
    "SMARTSHUNT_NAME_KEYWORD": _fixed("aggbatt recognises SmartShunts itself"),
    "SMARTSHUNT_INSTANCE_NAME_PATH": _fixed("text entries of current.shunts match /CustomName"),
    "SEARCH_TRIALS": _not_needed(_NEVER_EXITS),
    "READ_TRIALS": _not_needed(_NEVER_EXITS),
    "UPDATE_INTERVAL_FIND_DEVICES": _not_needed(_NEVER_EXITS),
    "UPDATE_INTERVAL_DATA": _to("service.tick_interval", _float),
    "TIME_BEFORE_RESTART": _not_needed(_NEVER_EXITS),
    "CAN_batteries": _not_needed(
        "aggbatt handles a missing path per value, for serial and CAN packs alike; make sure "
        "discovery.product_name_contains matches every pack's /ProductName"),
    "CURRENT_FROM_VICTRON": _to("current.source",
                                lambda raw: "victron_devices" if _bool(raw) else "bms_sum"),
    "USE_SMARTSHUNTS": _smartshunts,
    "INVERT_SMARTSHUNTS": _invert_shunts,
    "IGNORE_SMARTSHUNT_ABSENCE": _shunt_absence,
    "SMARTSHUNT_AS_BATTERY_CURRENT": _to("current.shunt_alone", _bool),
    "OWN_SOC": _soc_strategy,
    "ZERO_SOC": _to("soc.zero_soc_reset", _bool),
    "MAX_CELL_VOLTAGE_SOC_FULL": _soc_full,
    "MIN_CELL_VOLTAGE_SOC_EMPTY": _soc_empty,
    "OWN_SOC_FULL_VOLTAGE": _zero_means_off(
        "aggbatt resets to 100 % on the highest cell (soc.full_cell_voltage), optionally with "
        "soc.tail_current and soc.full_hold_time"),
    "OWN_SOC_FULL_CELL_MEDIAN_VOLTAGE": _zero_means_off(
        "aggbatt resets to 100 % on the highest cell (soc.full_cell_voltage), optionally with "
        "soc.tail_current and soc.full_hold_time"),
    "CHARGE_SAVE_PRECISION": _to("soc.save_precision", _float),
    "OWN_CHARGE_PARAMETERS": _charge_strategy,
    "BALANCING_VOLTAGE": _to("charge.own.balancing_cell_voltage", _float),
    "BALANCING_REPETITION": _to("charge.own.balancing_repetition", _int),
    "CHARGE_VOLTAGE_LIST": _to("charge.own.charge_cell_voltage", _floats),
    "MAX_CELL_VOLTAGE": _to("charge.own.max_cell_voltage", _float),
    "MIN_CELL_VOLTAGE": _to("charge.own.min_cell_voltage", _float),
    "MIN_CELL_HYSTERESIS": _to("charge.own.min_cell_hysteresis", _float),
    "CELL_DIFF_MAX": _to("charge.own.cell_diff_max", _float),
    "BATTERY_EFFICIENCY": _to("soc.charge_efficiency", _float),
    "MAX_CHARGE_CURRENT": _to("charge.own.max_charge_current", _float),
    "MAX_DISCHARGE_CURRENT": _to("charge.own.max_discharge_current", _float),
    "CELL_CHARGE_LIMITING_VOLTAGE": _table(_charge_knots, "MIN/BALANCING/MAX_CELL_VOLTAGE",
                                           "CELL_CHARGE_LIMITED_CURRENT",
                                           "charge.own.cell_charge_voltages",
                                           "charge.own.cell_charge_factors"),
    "CELL_CHARGE_LIMITED_CURRENT": _factors_done_with("CELL_CHARGE_LIMITING_VOLTAGE"),
    "CELL_DISCHARGE_LIMITING_VOLTAGE": _table(_discharge_knots, "MIN_CELL_VOLTAGE",
                                              "CELL_DISCHARGE_LIMITED_CURRENT",
                                              "charge.own.cell_discharge_voltages",
                                              "charge.own.cell_discharge_factors"),
    "CELL_DISCHARGE_LIMITED_CURRENT": _factors_done_with("CELL_DISCHARGE_LIMITING_VOLTAGE"),
    "AGGREGATE_CHARGE_MODE": _aggregate_charge_mode,
    "KEEP_MAX_CVL": _keep_max_cvl,
    "SEND_CELL_VOLTAGES": _to("discovery.cell_voltages", lambda raw: _int(raw) != 0),
    "LOGGING": _log_level,
    "LOG_PERIOD": _not_needed("aggbatt logs changes when they happen instead of a periodic "
                              "summary; `aggbatt status` shows the present state"),
}
assert set(RULES) == set(REFERENCE_DEFAULTS)


# ----- reading the INI -----------------------------------------------------------------------

def read_ini(text: str, source: str = "<string>") -> dict[str, str]:
    """Keys (as the reference spells them) -> raw values, from all sections of an INI text."""
    parser = configparser.ConfigParser(interpolation=None, strict=False,
                                       comment_prefixes=(";", "#"),
                                       inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    if not text.lstrip().startswith("["):
        text = "[DEFAULT]\n" + text
    try:
        parser.read_string(text, source)
    except configparser.Error as exc:
        raise MigrationError(f"{source} is not a readable INI file: {exc}") from None
    canonical = {key.upper(): key for key in REFERENCE_DEFAULTS}
    values: dict[str, str] = {}
    for section in [parser.default_section, *parser.sections()]:
        items = parser.defaults() if section == parser.default_section else parser[section]
        for key, value in items.items():
            # One line per value: multi-line lists are joined, so notes stay one line each.
            values[canonical.get(key.upper(), key)] = " ".join((value or "").split())
    return values


def convert(user: dict[str, str]) -> Migration:
    """Map the user's keys over the reference defaults; validation comes later (``finish``)."""
    m = Migration(effective={**REFERENCE_DEFAULTS, **user})
    for key, raw in m.effective.items():
        rule = RULES.get(key)
        if rule is None:
            m.not_mapped.append(Note(key, raw, "unknown key: not in the reference's "
                                     "config.default.ini (a fork's option?)"))
            continue
        try:
            rule(m, key, raw)
        except ValueError as exc:
            m.not_mapped.append(Note(key, raw, f"{exc}; aggbatt's default is kept"))
    return m


# ----- writing TOML --------------------------------------------------------------------------

def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render(m: Migration, source: str, today: date) -> str:
    lines = [
        f"# aggbatt configuration converted by `aggbatt migrate-ini` from {source} on "
        f"{today.isoformat()}.",
        "# Options not set here keep aggbatt's defaults (config.example.toml lists them all).",
        "# Each value names the dbus-aggregate-batteries setting it came from.",
    ]
    by_table: dict[str, list[str]] = {}
    for dotted, value in m.settings.items():
        table, _, key = dotted.rpartition(".")
        by_table.setdefault(table, []).append(f"{key} = {_show(value)}  # {m.origin[dotted]}")
    for table in sorted(by_table, key=lambda t: _TABLES.index(t) if t in _TABLES else len(_TABLES)):
        lines += ["", f"[{table}]", *by_table[table]]
    if m.not_mapped:
        lines += ["", "# Not converted:"]
        lines += [f"#   {note}" for note in m.not_mapped]
    return "\n".join(lines) + "\n"


def finish(m: Migration, source: str, today: date) -> str:
    """The TOML text, after dropping every mapped value that aggbatt's config rejects."""
    from aggbatt.config import ConfigError, parse_config

    for _ in range(len(m.settings) + 1):
        text = render(m, source, today)
        try:
            parse_config(text, "converted config")
            return text
        except ConfigError as exc:
            dropped = False
            for issue in exc.errors:
                for dotted in [d for d in m.settings if _covers(d, issue.key)]:
                    ref_key = m.origin[dotted]
                    m.not_mapped.append(Note(ref_key, m.effective.get(ref_key, ""),
                                             f"aggbatt rejects {dotted} = {_show(m.settings[dotted])}: "
                                             f"{issue.message}; its default is kept"))
                    del m.settings[dotted]
                    dropped = True
            if not dropped:
                raise MigrationError(f"the converted config does not validate:\n{exc}") from None
    raise MigrationError("the converted config does not validate")


def _covers(dotted: str, issue_key: str) -> bool:
    return issue_key == dotted or issue_key.startswith((dotted + ".", dotted + "["))


# ----- state files ---------------------------------------------------------------------------

def date_of_day(day: int, today: date) -> date:
    """The most recent date that is day `day` (1..366) of its year and not after `today`."""
    if not 1 <= day <= 366:
        raise ValueError(f"day of the year {day} is not 1..366")
    for year in range(today.year, today.year - 9, -1):
        candidate = date(year, 1, 1) + timedelta(days=day - 1)
        if candidate.year == year and candidate <= today:
            return candidate
    raise ValueError(f"no year with a day {day}")  # unreachable: every 8 years hold a leap year


def _first_existing(directory: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


def _write_state(path: Path, data: dict[str, Any], force: bool) -> str | None:
    """None when written, else why not."""
    if path.exists() and not force:
        return f"{path} exists (aggbatt's own state): kept, use --force to replace it"
    write_json_atomic(path, data)
    return None


def convert_state(reference_dir: Path, state_dir: Path, today: date, force: bool = False,
                  max_state_age: float | None = None,
                  capacity: float | None = None) -> list[str]:
    """Convert the reference's state files; returns one line per file for the user."""
    report: list[str] = []
    charge_file = _first_existing(reference_dir, CHARGE_FILES)
    if charge_file is None:
        report.append(f"no {CHARGE_FILES[0]} in {reference_dir}: the counter starts from the BMS SoCs")
    else:
        report.append(_convert_charge(charge_file, state_dir, force, max_state_age, capacity))
    balancing_file = _first_existing(reference_dir, BALANCING_FILES)
    if balancing_file is None:
        report.append(f"no {BALANCING_FILES[0]} in {reference_dir}: balancing is due at once")
    else:
        report.append(_convert_balancing(balancing_file, state_dir, today, force))
    return report


def _convert_charge(path: Path, state_dir: Path, force: bool, max_state_age: float | None,
                    capacity: float | None) -> str:
    raw = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        charge = _float(raw)
    except ValueError as exc:
        return f"{path.name} = {raw!r} {exc}: not converted, the counter starts from the BMS SoCs"
    if charge < 0:
        return (f"{path.name} = {raw}: 'start from the BMS SoCs', which aggbatt does without a "
                f"saved charge: nothing written")
    mtime = path.stat().st_mtime
    saved = datetime.fromtimestamp(mtime, timezone.utc)
    if capacity is not None and charge > capacity:
        return (f"{path.name} = {charge:.3f} Ah is more than the {capacity:g} Ah of --capacity: "
                "not converted, the counter starts from the BMS SoCs")
    target = state_dir / SOC_FILE
    record: dict[str, Any] = {"version": SOC_VERSION, "charge_ah": round(charge, 4),
                              "saved_at": saved.isoformat(timespec="seconds")}
    if capacity is not None:
        record["capacity_ah"] = round(capacity, 4)
    problem = _write_state(target, record, force)
    if problem:
        return f"{path.name}: {problem}"
    line = f"{path.name} = {charge:.3f} Ah (saved {saved.isoformat(timespec='seconds')}) -> {target}"
    if capacity is not None:
        line += f", {100 * charge / capacity:.1f} % of {capacity:g} Ah"
    else:
        line += ("; no --capacity: the own SoC stays invalid after the start until every pack "
                 "is online")
    age = datetime.now(timezone.utc).timestamp() - mtime
    if max_state_age is not None and age > max_state_age:
        line += (f"; it is {age / 86400:.1f} days old, more than soc.max_state_age allows, so aggbatt "
                 "will start from the BMS SoCs instead")
    return line


def _convert_balancing(path: Path, state_dir: Path, today: date, force: bool) -> str:
    raw = path.read_text(encoding="utf-8", errors="replace").strip()
    try:
        day = _int(raw)
        last: date | None = None if day == 0 else date_of_day(day, today)
    except ValueError as exc:
        return f"{path.name} = {raw!r}: {exc}: not converted, balancing is due at once"
    target = state_dir / BALANCING_FILE
    problem = _write_state(target, {"version": BALANCING_VERSION,
                                    "last_balancing": last.isoformat() if last else None}, force)
    if problem:
        return f"{path.name}: {problem}"
    when = last.isoformat() if last else "never (balancing is due at once)"
    return f"{path.name} = day {day} -> {target}: last balancing {when}"


# ----- the whole job -------------------------------------------------------------------------

@dataclass
class Result:
    migration: Migration
    out: Path
    state_lines: list[str]


def migrate(ini: Path, out: Path, state_dir: Path | None = None,
            reference_dir: Path | None = None, force: bool = False,
            today: date | None = None, capacity: float | None = None) -> Result:
    today = today or date.today()
    if out.exists() and not force:
        raise MigrationError(f"{out} exists: choose another --out or add --force to replace it")
    try:
        text = ini.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(f"cannot read {ini}: {exc}") from None
    m = convert(read_ini(text, str(ini)))
    toml_text = finish(m, str(ini), today)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(toml_text, encoding="utf-8")
    os.replace(tmp, out)
    lines: list[str] = []
    if state_dir is not None:
        from aggbatt.config import parse_config

        age = parse_config(toml_text).soc.max_state_age
        lines = convert_state(reference_dir or ini.parent, state_dir, today, force, age, capacity)
    return Result(m, out, lines)


def report(result: Result) -> str:
    m = result.migration
    lines = [f"wrote {result.out}: {len(m.settings)} settings"]
    if m.notes:
        lines.append(f"converted with a difference ({len(m.notes)}):")
        lines += [f"  {note}" for note in m.notes]
    if m.not_needed:
        lines.append(f"not mapped, aggbatt needs no setting for these ({len(m.not_needed)}):")
        lines += [f"  {note}" for note in m.not_needed]
    if m.not_mapped:
        lines.append(f"NOT MAPPED ({len(m.not_mapped)}):")
        lines += [f"  {note}" for note in m.not_mapped]
    if result.state_lines:
        lines.append("state:")
        lines += [f"  {line}" for line in result.state_lines]
    else:
        lines.append("state: not converted (give --state-dir to convert storedvalue_charge and "
                     "storedvalue_last_balancing)")
    return "\n".join(lines)
