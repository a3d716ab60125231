"""The D-Bus paths of a battery service that aggbatt reads, and which of them are urgent.

A pack's driver (serialbattery, a Victron BMS) publishes these under its com.victronenergy.battery
service; the aggregate publishes the same paths for the bank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

# A change of one of these must trigger an immediate (debounced) tick.
SAFETY_PATHS: frozenset[str] = frozenset({
    CVL, CCL, DCL, ALLOW_CHARGE, ALLOW_DISCHARGE, BLOCKING_CHARGE, BLOCKING_DISCHARGE,
    MAX_CELL_VOLTAGE, MIN_CELL_VOLTAGE, MODULES_ONLINE, *ALARM_PATHS,
})

# Voltage and current change every second on every pack, so they are not safety paths; only their
# turning invalid (serialbattery's link loss) is urgent, see `needs_urgent_tick`.
_LINK_PATHS = (VOLTAGE, CURRENT)


def needs_urgent_tick(changed: Mapping[str, Any]) -> bool:
    """True when a pack's changed values must be acted on at once rather than at the next tick."""
    if not SAFETY_PATHS.isdisjoint(changed):
        return True
    return any(path in changed and changed[path] is None for path in _LINK_PATHS)
