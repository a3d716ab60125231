"""Online packs -> bank values. Pure functions; the packs are already validated and online.

Formulas (docs/reference-aggregator.md §2, its defects of §11 avoided). Packs are in parallel,
so every pack sees the bank voltage:

- /Dc/0/Voltage: mean of the online packs (divided by the packs actually used, never by a
  configured count).
- /Dc/0/Temperature: max (default), mean or min over the packs that have a sensor; a pack without
  one is skipped instead of breaking the aggregate (3.11 item 6). Max because heat is the common
  derating trigger, and each BMS blocks cold charging itself.
- /System/Min|MaxCellVoltage and Min|MaxCellTemperature: extremes over the packs, the id is
  "<pack name>: <pack's cell id>" (or just the pack name when it gives no id). Ties go to the first
  pack in id order, so the id does not flicker between equal packs.
- /Voltages/Sum: mean of the packs' cell sums. Each pack's cell sum is close to the bank voltage
  whatever its cell count, so the mean stays meaningful for mixed cell counts (the reference's 0 V
  fallback, 3.11 item 12, is not used: a pack without a sum is skipped).
- /Voltages/Diff: highest cell of the bank minus lowest cell of the bank.
- /InstalledCapacity: sum of the online packs that report one.
- /System/NrOfModulesOnline: online packs; Offline: known packs that are not online (missing,
  stale, invalid or waiting for re-admission); BlockingCharge/Discharge: online packs that block
  (CCL 0, AllowTo* 0 or their own blocking count), the same rule the limits use.
- /System/NrOfCellsPerBattery: the common cell count, or invalid when the packs differ (bank limits
  are in volts, so mixed counts are fine).
- /Alarms/*: max over the online packs that report the alarm (a pack with an invalid alarm value is
  skipped, not allowed to invalidate the bank's alarm, 3.11 item 6). BmsCable also carries our own
  view: 2 when no pack is online, 1 while a known pack is offline or fewer than `expected_packs` are
  online. InternalFailure is at least 0 (ours; the fail-safe tick raises it to 2).
- /Io/AllowToCharge, AllowToDischarge, AllowToBalance: min over the packs that report them.
- /Info/BatteryLowVoltage: max over the packs: the Multi then stops before the weakest pack does.
- /Info/ChargeMode: the common mode, or "Mixed: 2 Absorption, 1 Float".
- /Balancing: max (1 while any pack balances).
- /System/NrOfBatteries and /System/BatteriesParallel: the known packs (online and offline), all in
  parallel, so /System/BatteriesSeries is 1. These fill the stock page's System sub-page.
- /History/*: only where the bank's value follows from the packs' values: the charged and
  discharged energy are summed, the lowest and highest voltages and temperatures are the
  extremes. Per-pack counters such as cycles or deepest discharge have no bank meaning and are
  left out (and so are the fast-moving ones, see pack_paths.HISTORY_PATHS).
Per-pack cell voltages (optional) go to /Voltages/<pack id>_Cell<n> with the id reduced to the
characters a D-Bus object path allows.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from aggbatt.core.pack_paths import (
    ALARM_PATHS,
    ALLOW_BALANCE,
    ALLOW_CHARGE,
    ALLOW_DISCHARGE,
    BALANCING,
    BATTERY_LOW_VOLTAGE,
    BLOCKING_CHARGE,
    BLOCKING_DISCHARGE,
    BMS_CABLE,
    CELLS_PER_BATTERY,
    CHARGE_MODE,
    HISTORY_MAX,
    HISTORY_MIN,
    HISTORY_PATHS,
    HISTORY_SUM,
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
    TEMPERATURE,
    VOLTAGE,
    VOLTAGES_SUM,
)
from aggbatt.core.snapshot import PackSnapshot

_T = TypeVar("_T")

MODULES_OFFLINE = "/System/NrOfModulesOffline"
VOLTAGES_DIFF = "/Voltages/Diff"
TEMPERATURE_MODES = ("max", "mean", "min")
NR_OF_BATTERIES = "/System/NrOfBatteries"
BATTERIES_PARALLEL = "/System/BatteriesParallel"
BATTERIES_SERIES = "/System/BatteriesSeries"
# Paths for the stock battery page's System and History sub-pages.
STOCK_PAGE_PATHS = (NR_OF_BATTERIES, BATTERIES_PARALLEL, BATTERIES_SERIES, *HISTORY_PATHS)


def _present(values: Iterable[_T | None]) -> list[_T]:
    return [v for v in values if v is not None]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _extreme(packs: Sequence[PackSnapshot], value: Callable[[PackSnapshot], float | None],
             cell_id: Callable[[PackSnapshot], str | None],
             better: Callable[[float, float], bool]) -> tuple[float | None, str | None]:
    best: PackSnapshot | None = None
    best_value: float | None = None
    for pack in packs:
        v = value(pack)
        if v is not None and (best_value is None or better(v, best_value)):
            best, best_value = pack, v
    if best is None:
        return None, None
    cid = cell_id(best)
    return best_value, f"{best.name}: {cid}" if cid else best.name


def bank_temperature(packs: Sequence[PackSnapshot], mode: str) -> float | None:
    temps = _present(p.temperature for p in packs)
    if not temps:
        return None
    if mode == "min":
        return min(temps)
    if mode == "mean":
        return sum(temps) / len(temps)
    return max(temps)


def cells_per_battery(packs: Sequence[PackSnapshot]) -> int | None:
    counts = set(_present(p.cells for p in packs))
    return counts.pop() if len(counts) == 1 else None


def charge_mode_summary(packs: Sequence[PackSnapshot]) -> str | None:
    modes = Counter(p.charge_mode for p in packs if p.charge_mode)
    if not modes:
        return None
    if len(modes) == 1:
        return next(iter(modes))
    ranked = sorted(modes.items(), key=lambda item: (-item[1], item[0]))
    return "Mixed: " + ", ".join(f"{count} {mode}" for mode, count in ranked)


def bms_cable_level(n_online: int, n_offline: int, expected_packs: int) -> int:
    """Our own view of the pack links: 2 none online, 1 one missing or fewer than expected."""
    if n_online == 0:
        return 2
    if n_offline > 0 or (expected_packs > 0 and n_online < expected_packs):
        return 1
    return 0


def alarms(packs: Sequence[PackSnapshot], n_offline: int, expected_packs: int) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for path in ALARM_PATHS:
        levels = _present(p.alarms.get(path) for p in packs)
        out[path] = max(levels) if levels else None
    own_cable = bms_cable_level(len(packs), n_offline, expected_packs)
    out[BMS_CABLE] = max(own_cable, out[BMS_CABLE] or 0)
    out[INTERNAL_FAILURE] = out[INTERNAL_FAILURE] or 0
    return out


def history(packs: Sequence[PackSnapshot]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for paths, combine in ((HISTORY_SUM, sum), (HISTORY_MIN, min), (HISTORY_MAX, max)):
        for path in paths:
            found = _present(p.history.get(path) for p in packs)
            out[path] = combine(found) if found else None
    return out


def aggregate(packs: Sequence[PackSnapshot], n_offline: int, expected_packs: int = 0,
              temperature_mode: str = "max") -> dict[str, Any]:
    """Bank values of the online `packs` (sorted by id) that no strategy decides."""
    max_cell, max_cell_id = _extreme(packs, lambda p: p.max_cell_voltage,
                                     lambda p: p.max_voltage_cell_id, lambda a, b: a > b)
    min_cell, min_cell_id = _extreme(packs, lambda p: p.min_cell_voltage,
                                     lambda p: p.min_voltage_cell_id, lambda a, b: a < b)
    max_temp, max_temp_id = _extreme(packs, lambda p: p.max_cell_temperature,
                                     lambda p: p.max_temperature_cell_id, lambda a, b: a > b)
    min_temp, min_temp_id = _extreme(packs, lambda p: p.min_cell_temperature,
                                     lambda p: p.min_temperature_cell_id, lambda a, b: a < b)
    installed = _present(p.installed_capacity for p in packs)
    allow_charge = _present(p.allow_charge for p in packs)
    allow_discharge = _present(p.allow_discharge for p in packs)
    allow_balance = _present(p.allow_balance for p in packs)
    low_voltages = _present(p.battery_low_voltage for p in packs)
    balancing = _present(p.balancing for p in packs)
    values: dict[str, Any] = {
        VOLTAGE: _mean(_present(p.voltage for p in packs)),
        TEMPERATURE: bank_temperature(packs, temperature_mode),
        INSTALLED_CAPACITY: sum(installed) if installed else None,
        MAX_CELL_VOLTAGE: max_cell,
        MAX_VOLTAGE_CELL_ID: max_cell_id,
        MIN_CELL_VOLTAGE: min_cell,
        MIN_VOLTAGE_CELL_ID: min_cell_id,
        MAX_CELL_TEMPERATURE: max_temp,
        MAX_TEMPERATURE_CELL_ID: max_temp_id,
        MIN_CELL_TEMPERATURE: min_temp,
        MIN_TEMPERATURE_CELL_ID: min_temp_id,
        VOLTAGES_SUM: _mean(_present(p.voltages_sum for p in packs)),
        VOLTAGES_DIFF: max_cell - min_cell if max_cell is not None and min_cell is not None else None,
        CELLS_PER_BATTERY: cells_per_battery(packs),
        MODULES_ONLINE: len(packs),
        MODULES_OFFLINE: n_offline,
        BLOCKING_CHARGE: sum(1 for p in packs if p.charge_block() is not None),
        BLOCKING_DISCHARGE: sum(1 for p in packs if p.discharge_block() is not None),
        ALLOW_CHARGE: min(allow_charge) if allow_charge else None,
        ALLOW_DISCHARGE: min(allow_discharge) if allow_discharge else None,
        ALLOW_BALANCE: min(allow_balance) if allow_balance else None,
        BATTERY_LOW_VOLTAGE: max(low_voltages) if low_voltages else None,
        CHARGE_MODE: charge_mode_summary(packs),
        BALANCING: max(balancing) if balancing else None,
        NR_OF_BATTERIES: len(packs) + n_offline,
        BATTERIES_PARALLEL: len(packs) + n_offline,
        BATTERIES_SERIES: 1,
    }
    values.update(alarms(packs, n_offline, expected_packs))
    values.update(history(packs))
    return values


_NOT_IN_PATH = re.compile(r"[^A-Za-z0-9_]")


def cell_path(pack_id: str, cell: int) -> str:
    return f"/Voltages/{_NOT_IN_PATH.sub('_', pack_id)}_Cell{cell}"


def cell_voltage_values(packs: Sequence[PackSnapshot]) -> dict[str, float]:
    return {cell_path(p.id, n): v for p in packs for n, v in sorted(p.cell_voltages.items())}
