"""What the engine gets of one pack: the service as the monitor sees it, and its typed snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    SOC,
    TEMPERATURE,
    VOLTAGE,
    VOLTAGES_SUM,
)


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
