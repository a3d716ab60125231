"""A simulated dbus-serialbattery pack (the connection life cycle it shares is sim/device.py).

Theory of operation:

- Physics and publishing are separate. `step(dt, current)` advances the pack (SoC integrates the
  current, cells follow OCV + I*R + per-cell offsets, the BMS recomputes its limits); `publish()`
  writes the resulting values into the BusItem service, which sends one PropertiesChanged per
  changed path, as serialbattery does through velib (victron-contract §4.1).
- Each device owns one dbus-fast connection and claims its well-known name only after every path
  exists (victron-contract §1.1).
- Faults are flags that `publish()` honours, so they can be switched at any time, in any order:
  frozen (on the bus, silent), vanished (connection closed), link lost (serialbattery's comm-loss
  values), invalidated paths, raw overrides (published bypassing the path's type), blocked
  charge/discharge (the BMS opens its FET).

BMS rules of the simulated pack (serialbattery-like, not a copy of its code):

| Value      | Rule                                                                             |
|------------|----------------------------------------------------------------------------------|
| CVL        | cells * max_cell_voltage; cells * float_cell_voltage in Float                    |
| CCL        | max_charge_current * min(SoC taper, temperature taper, max-cell taper)           |
| DCL        | max_discharge_current * min(SoC taper, temperature taper, min-cell taper)        |
| cell taper | 1 inside [min, max]_cell_voltage, 0 at 0.1 V beyond; once at 0 it stays 0 until |
|            | the cell is back inside [min, max] (the BMS's over/under-voltage cut-off)        |
| AllowTo*   | limit > 0 and not blocked; blocking count = 1 - AllowTo*                         |
| FET        | a pack that does not allow charging (discharging) takes no charge (discharge)    |
|            | current: `step` sets its current to 0                                            |
| ChargeMode | Bulk -> Absorption when max cell >= max_cell_voltage - 0.01 V while charging;    |
|            | Absorption -> Float after absorption_seconds; Float -> Bulk below rebulk_soc     |
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aggbatt.bus.service import (
    SignalStyle,
    unit_text,
)
from aggbatt.sim.device import (
    PathSpec,
    SimDevice,
    mandatory_specs,
    next_device_instance,
    process_version,
)
from aggbatt.sim.lfp import OcvCurve, ocv, piecewise_linear

log = logging.getLogger(__name__)

SERIALBATTERY_PRODUCT_ID = 0xBA77
SIM_VERSION = "aggbatt-sim 1"


# SoC/temperature tapers as fractions of the configured maximum current. The shapes follow the
# defaults in serialbattery's config.default.ini (CCCM_SOC/DCCM_SOC and CCCM_T/DCCM_T).
_CHARGE_SOC_TAPER = piecewise_linear(((91.0, 1.0), (95.0, 0.5), (98.0, 0.2), (100.0, 0.1)))
_DISCHARGE_SOC_TAPER = piecewise_linear(((0.0, 0.0), (5.0, 0.1), (10.0, 0.2), (20.0, 0.5), (30.0, 1.0)))
_CHARGE_TEMP_TAPER = piecewise_linear(
    ((0.0, 0.0), (2.0, 0.1), (5.0, 0.2), (10.0, 0.4), (15.0, 0.8), (20.0, 1.0), (35.0, 1.0),
     (40.0, 0.4), (55.0, 0.0))
)
_DISCHARGE_TEMP_TAPER = piecewise_linear(
    ((-20.0, 0.0), (0.0, 0.2), (5.0, 0.3), (10.0, 0.4), (15.0, 0.8), (20.0, 1.0), (45.0, 1.0),
     (50.0, 0.4), (60.0, 0.0))
)
_CELL_CUTOFF_MARGIN = 0.1
_ABSORPTION_MARGIN = 0.01
_LINK_ALARM_AFTER = 60.0
_BALANCE_THRESHOLD = 0.01
# serialbattery recomputes its history and its time-to-go once a minute (HISTORY_ENABLE,
# TIME_TO_SOC_RECALCULATE_EVERY) while it publishes every poll: between two recomputations those
# paths send nothing, and a simulated pack that sent them every poll would inflate the traffic.
_SLOW_RECALC_SECONDS = 60.0
# CurrentAvg is the mean of the last 300 measured currents, rounded like the current.
_CURRENT_AVG_SAMPLES = 300

ALARMS = (
    "LowVoltage", "HighVoltage", "LowCellVoltage", "HighCellVoltage", "LowSoc", "StateOfHealth",
    "HighChargeCurrent", "HighDischargeCurrent", "CellImbalance", "InternalFailure",
    "HighChargeTemperature", "LowChargeTemperature", "HighTemperature", "LowTemperature",
    "BmsCable", "HighInternalTemperature", "FuseBlown",
)



# ----- the pack ---------------------------------------------------------------------------------


@dataclass
class PackParams:
    cells: int = 16
    capacity_ah: float = 280.0
    soc: float = 50.0
    serial: str = "SIM0001"
    internal_resistance: float = 0.002
    max_charge_current: float = 100.0
    max_discharge_current: float = 150.0
    max_cell_voltage: float = 3.45
    min_cell_voltage: float = 2.9
    temperature: float = 25.0
    has_temperature: bool = True
    product_name: str | None = None
    custom_name: str | None = None
    device_instance: int | None = None
    cell_offsets_mv: list[float] | None = None
    ocv: OcvCurve = ocv
    float_cell_voltage: float = 3.375
    absorption_seconds: float = 900.0
    rebulk_soc: float = 80.0
    # Measurement noise of a real BMS (uniform, +-) while the pack carries current: its readings
    # then move every second. A pack carrying no current (at rest, or its FET open because it
    # blocks the flowing direction) reads steady values, so velib publishes nothing for minutes.
    noise_a: float = 0.0
    noise_mv: float = 0.0

    def __post_init__(self) -> None:
        if self.cells < 1:
            raise ValueError("a pack needs at least one cell")
        if self.capacity_ah <= 0:
            raise ValueError("capacity_ah must be positive")
        if self.cell_offsets_mv is not None and len(self.cell_offsets_mv) != self.cells:
            raise ValueError(f"cell_offsets_mv needs {self.cells} entries")


@dataclass
class _History:
    total_ah_drawn: float = 0.0
    charged_kwh: float = 0.0
    discharged_kwh: float = 0.0
    min_voltage: float = math.inf
    max_voltage: float = -math.inf
    min_cell: float = math.inf
    max_cell: float = -math.inf
    min_temp: float = math.inf
    max_temp: float = -math.inf
    deepest_discharge: float = 0.0
    since_full: float | None = None
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=_CURRENT_AVG_SAMPLES))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


class SimPack(SimDevice):
    """A dbus-serialbattery service for one simulated pack (see the module docstring)."""

    signals: SignalStyle = "properties"

    def __init__(self, params: PackParams, *, name_suffix: str) -> None:
        super().__init__(f"com.victronenergy.battery.{name_suffix}", params.custom_name)
        self.params = params
        self.name_suffix = name_suffix
        self.device_instance = (
            params.device_instance if params.device_instance is not None else next_device_instance()
        )
        self.product_name = params.product_name or f"SerialBattery(Simulated) {params.serial}"
        self.soc = min(100.0, max(0.0, float(params.soc)))
        self.current = 0.0
        self.measured_current = 0.0
        self._rng = random.Random(params.serial)
        self.temperature = float(params.temperature)
        self.elapsed = 0.0
        self._offsets = [o / 1000.0 for o in (params.cell_offsets_mv or [0.0] * params.cells)]
        self._drift = [0.0] * params.cells
        self._cell_names = [f"/Voltages/Cell{n}" for n in range(1, params.cells + 1)]
        self._balance_names = [f"/Balances/Cell{n}" for n in range(1, params.cells + 1)]
        self._block_charge = False
        self._block_discharge = False
        self._ovp = False
        self._uvp = False
        self._link_lost = False
        self._lost_for = 0.0
        self._held: dict[str, Any] = {}
        self.charge_mode = "Bulk"
        self._absorption_for = 0.0
        self._history = _History()
        self._slow: dict[str, Any] = {}
        self._slow_at = -math.inf
        self.cell_voltages: list[float] = []
        self.ccl = self.dcl = self.cvl = 0.0
        self.charge_limitation = self.discharge_limitation = ""
        self._update_cells()
        self._update_bms()
        self._update_history(0.0)
        self._update_slow()

    # ----- physics --------------------------------------------------------------------------------

    @property
    def allow_charge(self) -> bool:
        return self.ccl > 0 and not self._block_charge

    @property
    def allow_discharge(self) -> bool:
        return self.dcl > 0 and not self._block_discharge

    def accepts(self, current: float) -> bool:
        """Whether the BMS lets `current` (+ = charging) through its FETs."""
        if current > 0:
            return self.allow_charge
        if current < 0:
            return self.allow_discharge
        return True

    def step(self, dt: float, current: float) -> None:
        """Advance `dt` seconds with `current` amps (+ = charging) offered to the pack."""
        p = self.params
        current = float(current) if self.accepts(current) else 0.0
        self.current = current
        self.measured_current = current + self._jitter(p.noise_a) if current else 0.0
        self.elapsed += dt
        self.soc = min(100.0, max(0.0, self.soc + current * dt / 36.0 / p.capacity_ah))
        self._update_cells()
        self._update_bms()
        self._update_charge_mode(dt)
        self._update_history(dt)
        self._update_slow()
        if self._link_lost:
            self._lost_for += dt

    def _update_cells(self) -> None:
        p = self.params
        base = p.ocv(self.soc / 100.0) + self.current * p.internal_resistance
        noise = self.params.noise_mv / 1000.0 if self.current else 0.0
        self.cell_voltages = [base + o + d + self._jitter(noise)
                              for o, d in zip(self._offsets, self._drift, strict=True)]

    def _jitter(self, amplitude: float) -> float:
        return self._rng.uniform(-amplitude, amplitude) if amplitude else 0.0

    def _update_bms(self) -> None:
        p = self.params
        high, low = max(self.cell_voltages), min(self.cell_voltages)
        over, under = high - p.max_cell_voltage, p.min_cell_voltage - low
        self._ovp = over >= _CELL_CUTOFF_MARGIN or (self._ovp and over > 0)
        self._uvp = under >= _CELL_CUTOFF_MARGIN or (self._uvp and under > 0)
        charge_cell = 0.0 if self._ovp else min(1.0, 1.0 - over / _CELL_CUTOFF_MARGIN)
        discharge_cell = 0.0 if self._uvp else min(1.0, 1.0 - under / _CELL_CUTOFF_MARGIN)
        temp = self.temperature if p.has_temperature else 25.0
        charge = {
            "Max Battery Charge Current": 1.0,
            "SoC": _CHARGE_SOC_TAPER(self.soc),
            "Temperature": _CHARGE_TEMP_TAPER(temp),
            "Cell Voltage": max(0.0, charge_cell),
        }
        discharge = {
            "Max Battery Discharge Current": 1.0,
            "SoC": _DISCHARGE_SOC_TAPER(self.soc),
            "Temperature": _DISCHARGE_TEMP_TAPER(temp),
            "Cell Voltage": max(0.0, discharge_cell),
        }
        self.charge_limitation = min(charge, key=charge.__getitem__)
        self.discharge_limitation = min(discharge, key=discharge.__getitem__)
        self.ccl = p.max_charge_current * charge[self.charge_limitation]
        self.dcl = p.max_discharge_current * discharge[self.discharge_limitation]
        if self._block_charge:
            self.ccl, self.charge_limitation = 0.0, "BMS blocked"
        if self._block_discharge:
            self.dcl, self.discharge_limitation = 0.0, "BMS blocked"
        cell_target = p.float_cell_voltage if self.charge_mode == "Float" else p.max_cell_voltage
        self.cvl = p.cells * cell_target

    def _update_charge_mode(self, dt: float) -> None:
        p = self.params
        if self.charge_mode == "Bulk":
            if self.current > 0 and max(self.cell_voltages) >= p.max_cell_voltage - _ABSORPTION_MARGIN:
                self.charge_mode, self._absorption_for = "Absorption", 0.0
        elif self.charge_mode == "Absorption":
            self._absorption_for += dt
            if self._absorption_for >= p.absorption_seconds:
                self.charge_mode = "Float"
                self._update_bms()
        elif self.soc < p.rebulk_soc:
            self.charge_mode = "Bulk"
            self._update_bms()

    def _update_history(self, dt: float) -> None:
        h = self._history
        voltage = sum(self.cell_voltages)
        ah = self.current * dt / 3600.0
        if ah < 0:
            h.total_ah_drawn += ah
            h.discharged_kwh -= ah * voltage / 1000.0
        else:
            h.charged_kwh += ah * voltage / 1000.0
        h.min_voltage = min(h.min_voltage, voltage)
        h.max_voltage = max(h.max_voltage, voltage)
        h.min_cell = min(h.min_cell, min(self.cell_voltages))
        h.max_cell = max(h.max_cell, max(self.cell_voltages))
        if self.params.has_temperature:
            h.min_temp = min(h.min_temp, self.temperature)
            h.max_temp = max(h.max_temp, self.temperature)
        consumed = -(100.0 - self.soc) * self.params.capacity_ah / 100.0
        h.deepest_discharge = min(h.deepest_discharge, consumed)
        if self.soc >= 100.0:
            h.since_full = 0.0
        elif h.since_full is not None:
            h.since_full += dt
        h.samples.append(self.measured_current)

    def _update_slow(self) -> None:
        """Recompute the once-a-minute paths (see _SLOW_RECALC_SECONDS) when their minute is up."""
        if self.elapsed - self._slow_at < _SLOW_RECALC_SECONDS:
            return
        self._slow_at = self.elapsed
        p, h = self.params, self._history
        remaining = p.capacity_ah * self.soc / 100.0
        self._slow = {
            "/TimeToGo": self._time_to_go(remaining),
            "/History/DeepestDischarge": h.deepest_discharge,
            "/History/LastDischarge": h.deepest_discharge,
            "/History/AverageDischarge": h.deepest_discharge,
            "/History/TotalAhDrawn": h.total_ah_drawn,
            "/History/ChargeCycles": -h.total_ah_drawn / p.capacity_ah,
            "/History/FullDischarges": 0,
            "/History/MinimumVoltage": _finite(h.min_voltage),
            "/History/MaximumVoltage": _finite(h.max_voltage),
            "/History/MinimumCellVoltage": _finite(h.min_cell),
            "/History/MaximumCellVoltage": _finite(h.max_cell),
            "/History/MinimumTemperature": _finite(h.min_temp),
            "/History/MaximumTemperature": _finite(h.max_temp),
            "/History/TimeSinceLastFullCharge": h.since_full,
            "/History/AutomaticSyncs": 0,
            "/History/LowVoltageAlarms": 0,
            "/History/HighVoltageAlarms": 0,
            "/History/DischargedEnergy": h.discharged_kwh,
            "/History/ChargedEnergy": h.charged_kwh,
        }

    # ----- faults ---------------------------------------------------------------------------------

    def link_lost(self, on: bool = True) -> None:
        """serialbattery's communication loss: V/I/P invalid, module offline, limits held."""
        if on and not self._link_lost:
            self._held = self._values()
            self._lost_for = 0.0
        self._link_lost = on

    def block_charge(self, on: bool = True) -> None:
        self._block_charge = on
        self._update_bms()

    def block_discharge(self, on: bool = True) -> None:
        self._block_discharge = on
        self._update_bms()

    def drift_cell(self, cell: int, mv: float) -> None:
        """Offset cell `cell` (1-based, as in /Voltages/Cell<n>) by `mv` millivolts from now on."""
        if not 1 <= cell <= self.params.cells:
            raise ValueError(f"cell {cell} outside 1..{self.params.cells}")
        self._drift[cell - 1] = mv / 1000.0
        self._update_cells()
        self._update_bms()

    def set_temperature(self, celsius: float) -> None:
        self.temperature = float(celsius)
        self._update_bms()

    # ----- bus values -----------------------------------------------------------------------------

    def _specs(self) -> list[PathSpec]:
        volts, amps, cellv = unit_text("V", 2), unit_text("A", 2), unit_text("V", 3)
        celsius, pct, ah = unit_text("°C", 1), unit_text("%", 2), unit_text("Ah", 2)
        specs = mandatory_specs() + [
            PathSpec("/Family", str),
            PathSpec("/DeviceName", str),
            PathSpec("/Manufacturer", str),
            PathSpec("/State", int),
            PathSpec("/Mode", int),
            PathSpec("/DeviceState", int),
            PathSpec("/ErrorCode", int),
            PathSpec("/ConnectionInformation", str),
            PathSpec("/Soc", float, 2, pct),
            PathSpec("/Soh", float, 2, pct),
            PathSpec("/Capacity", float, 2, ah),
            PathSpec("/InstalledCapacity", float, 2, unit_text("Ah", 0)),
            PathSpec("/ConsumedAmphours", float, 2, ah),
            PathSpec("/TimeToGo", int, text=unit_text("s", 0)),
            PathSpec("/CurrentAvg", float, 2, amps),
            PathSpec("/Dc/0/Voltage", float, 2, volts),
            PathSpec("/Dc/0/Current", float, 2, amps),
            PathSpec("/Dc/0/Power", float, 2, unit_text("W", 0)),
            PathSpec("/Dc/0/Temperature", float, 1, celsius),
            PathSpec("/Info/BatteryLowVoltage", float, 2, volts),
            PathSpec("/Info/MaxChargeVoltage", float, 2, volts),
            PathSpec("/Info/MaxChargeCellVoltage", float, 3, cellv),
            PathSpec("/Info/MaxChargeCurrent", float, 2, amps),
            PathSpec("/Info/MaxDischargeCurrent", float, 2, amps),
            PathSpec("/Info/ChargeMode", str),
            PathSpec("/Info/ChargeModeDebug", str),
            PathSpec("/Info/ChargeModeDebugFloat", str),
            PathSpec("/Info/ChargeModeDebugBulk", str),
            PathSpec("/Info/ChargeLimitation", str),
            PathSpec("/Info/DischargeLimitation", str),
            PathSpec("/Info/HeatingCurrent", float, 2, amps),
            PathSpec("/Info/HeatingPower", float, 2, unit_text("W", 0)),
            PathSpec("/Info/HeatingTemperatureStart", float, 1, celsius),
            PathSpec("/Info/HeatingTemperatureStop", float, 1, celsius),
            PathSpec("/System/NrOfCellsPerBattery", int),
            PathSpec("/System/NrOfModulesOnline", int),
            PathSpec("/System/NrOfModulesOffline", int),
            PathSpec("/System/NrOfModulesBlockingCharge", int),
            PathSpec("/System/NrOfModulesBlockingDischarge", int),
            PathSpec("/System/MinCellVoltage", float, 3, cellv),
            PathSpec("/System/MaxCellVoltage", float, 3, cellv),
            PathSpec("/System/MinVoltageCellId", str),
            PathSpec("/System/MaxVoltageCellId", str),
            PathSpec("/System/MinCellTemperature", float, 1, celsius),
            PathSpec("/System/MaxCellTemperature", float, 1, celsius),
            PathSpec("/System/MinTemperatureCellId", str),
            PathSpec("/System/MaxTemperatureCellId", str),
            PathSpec("/System/MOSTemperature", float, 1, celsius),
            *(PathSpec(f"/System/Temperature{n}", float, 1, celsius) for n in range(1, 5)),
            *(PathSpec(f"/System/Temperature{n}Name", str) for n in range(1, 5)),
            PathSpec("/Io/AllowToCharge", int),
            PathSpec("/Io/AllowToDischarge", int),
            PathSpec("/Io/AllowToBalance", int),
            PathSpec("/Io/AllowToHeat", int),
            PathSpec("/Balancing", int),
            PathSpec("/Heating", int),
            *(PathSpec(f"/Alarms/{name}", int) for name in ALARMS),
            *(PathSpec(path, float, 3, cellv) for path in self._cell_names),
            *(PathSpec(path, int) for path in self._balance_names),
            PathSpec("/Voltages/Sum", float, 2, volts),
            PathSpec("/Voltages/Diff", float, 3, cellv),
            PathSpec("/History/DeepestDischarge", float, 2, ah),
            PathSpec("/History/LastDischarge", float, 2, ah),
            PathSpec("/History/AverageDischarge", float, 2, ah),
            PathSpec("/History/FullDischarges", int),
            PathSpec("/History/AutomaticSyncs", int),
            PathSpec("/History/LowVoltageAlarms", int),
            PathSpec("/History/HighVoltageAlarms", int),
            PathSpec("/History/TotalAhDrawn", float, 2, ah),
            PathSpec("/History/ChargeCycles", float, 2),
            PathSpec("/History/MinimumVoltage", float, 2, volts),
            PathSpec("/History/MaximumVoltage", float, 2, volts),
            PathSpec("/History/MinimumCellVoltage", float, 3, cellv),
            PathSpec("/History/MaximumCellVoltage", float, 3, cellv),
            PathSpec("/History/MinimumTemperature", float, 1, celsius),
            PathSpec("/History/MaximumTemperature", float, 1, celsius),
            PathSpec("/History/TimeSinceLastFullCharge", int, text=unit_text("s", 0)),
            PathSpec("/History/DischargedEnergy", float, 2, unit_text("kWh", 2)),
            PathSpec("/History/ChargedEnergy", float, 2, unit_text("kWh", 2)),
            PathSpec("/History/Clear", int, writeable=True),
            PathSpec("/History/CanBeCleared", int),
            PathSpec("/Settings/HasTemperature", int),
            PathSpec("/Settings/HasSettings", int),
            PathSpec("/JsonData", str),
        ]
        return specs

    def _values(self) -> dict[str, Any]:
        if self._link_lost:
            values = dict(self._held)
            values.update({
                "/Dc/0/Voltage": None, "/Dc/0/Current": None, "/Dc/0/Power": None,
                "/System/NrOfModulesOnline": 0, "/System/NrOfModulesOffline": 1,
                "/ConnectionInformation": f"Lost for {int(self._lost_for)}s",
                "/Alarms/BmsCable": 1 if self._lost_for >= _LINK_ALARM_AFTER else 0,
                "/CustomName": self.custom_name,
            })
            return values
        return self._fresh_values()

    def _fresh_values(self) -> dict[str, Any]:
        p = self.params
        cells = self.cell_voltages
        voltage = sum(cells)
        high, low = max(cells), min(cells)
        high_id, low_id = cells.index(high) + 1, cells.index(low) + 1
        remaining = p.capacity_ah * self.soc / 100.0
        has_t = p.has_temperature
        temp = self.temperature if has_t else None
        allow_charge, allow_discharge = int(self.allow_charge), int(self.allow_discharge)
        balancing = high >= p.max_cell_voltage - 0.05 and high - low >= _BALANCE_THRESHOLD
        h = self._history
        values: dict[str, Any] = {
            "/Mgmt/ProcessName": "aggbatt.sim.pack",
            "/Mgmt/ProcessVersion": process_version(),
            "/Mgmt/Connection": f"Serial /dev/{self.name_suffix}",
            "/DeviceInstance": self.device_instance,
            "/ProductId": SERIALBATTERY_PRODUCT_ID,
            "/ProductName": self.product_name,
            "/FirmwareVersion": SIM_VERSION,
            "/HardwareVersion": f"{p.cells}S {p.capacity_ah:g}Ah",
            "/Connected": 1,
            "/CustomName": self.custom_name,
            "/Serial": p.serial,
            "/Family": None,
            "/DeviceName": "Simulated BMS",
            "/Manufacturer": "aggbatt",
            "/State": 9,
            "/Mode": 3,
            "/DeviceState": 0x100,
            "/ErrorCode": 0,
            "/ConnectionInformation": "Connected",
            "/Soc": self.soc,
            "/Soh": 100.0,
            "/Capacity": remaining,
            "/InstalledCapacity": p.capacity_ah,
            "/ConsumedAmphours": remaining - p.capacity_ah,
            "/CurrentAvg": sum(h.samples) / len(h.samples) if h.samples else self.measured_current,
            "/Dc/0/Voltage": voltage,
            "/Dc/0/Current": self.measured_current,
            "/Dc/0/Power": voltage * self.measured_current,
            "/Dc/0/Temperature": temp,
            "/Info/BatteryLowVoltage": p.cells * p.min_cell_voltage,
            "/Info/MaxChargeVoltage": self.cvl,
            "/Info/MaxChargeCellVoltage": self.cvl / p.cells,
            "/Info/MaxChargeCurrent": self.ccl,
            "/Info/MaxDischargeCurrent": self.dcl,
            "/Info/ChargeMode": self.charge_mode,
            "/Info/ChargeModeDebug": "",
            "/Info/ChargeModeDebugFloat": "",
            "/Info/ChargeModeDebugBulk": "",
            "/Info/ChargeLimitation": self.charge_limitation,
            "/Info/DischargeLimitation": self.discharge_limitation,
            "/Info/HeatingCurrent": None,
            "/Info/HeatingPower": None,
            "/Info/HeatingTemperatureStart": None,
            "/Info/HeatingTemperatureStop": None,
            "/System/NrOfCellsPerBattery": p.cells,
            "/System/NrOfModulesOnline": 1,
            "/System/NrOfModulesOffline": 0,
            "/System/NrOfModulesBlockingCharge": 1 - allow_charge,
            "/System/NrOfModulesBlockingDischarge": 1 - allow_discharge,
            "/System/MinCellVoltage": low,
            "/System/MaxCellVoltage": high,
            "/System/MinVoltageCellId": f"C{low_id}",
            "/System/MaxVoltageCellId": f"C{high_id}",
            "/System/MinCellTemperature": temp,
            "/System/MaxCellTemperature": temp,
            "/System/MinTemperatureCellId": "T1" if has_t else None,
            "/System/MaxTemperatureCellId": "T1" if has_t else None,
            "/System/MOSTemperature": temp,
            "/System/Temperature1": temp,
            "/System/Temperature2": temp,
            "/System/Temperature3": None,
            "/System/Temperature4": None,
            "/System/Temperature1Name": "Temp 1" if has_t else None,
            "/System/Temperature2Name": "Temp 2" if has_t else None,
            "/System/Temperature3Name": None,
            "/System/Temperature4Name": None,
            "/Io/AllowToCharge": allow_charge,
            "/Io/AllowToDischarge": allow_discharge,
            "/Io/AllowToBalance": 1,
            "/Io/AllowToHeat": None,
            "/Balancing": int(balancing),
            "/Heating": None,
            "/Voltages/Sum": voltage,
            "/Voltages/Diff": high - low,
            **self._slow,
            "/History/Clear": 0,
            "/History/CanBeCleared": 0,
            "/Settings/HasTemperature": int(has_t),
            "/Settings/HasSettings": 0,
            "/JsonData": None,
        }
        values.update(self._alarms(voltage, high, low))
        values.update(zip(self._cell_names, cells, strict=True))
        balance_floor = low + _BALANCE_THRESHOLD
        values.update((name, int(balancing and v >= balance_floor))
                      for name, v in zip(self._balance_names, cells, strict=True))
        return values

    def _time_to_go(self, remaining: float) -> int | None:
        samples = self._history.samples
        average = sum(samples) / len(samples) if samples else self.measured_current
        if abs(average) <= 0.1:
            return None
        target = self.params.capacity_ah - remaining if average > 0 else remaining
        return int(target / abs(average) * 3600)

    def _alarms(self, voltage: float, high: float, low: float) -> dict[str, int]:
        p = self.params
        temp = self.temperature if p.has_temperature else None

        def level(value: float | None, warn: float, alarm: float, above: bool) -> int:
            if value is None:
                return 0
            if above:
                return 2 if value > alarm else 1 if value > warn else 0
            return 2 if value < alarm else 1 if value < warn else 0

        max_v, min_v = p.max_cell_voltage, p.min_cell_voltage
        return {
            "/Alarms/LowVoltage": level(voltage, p.cells * min_v, p.cells * (min_v - 0.1), False),
            "/Alarms/HighVoltage": level(
                voltage, p.cells * (max_v + 0.05), p.cells * (max_v + 0.1), True),
            "/Alarms/LowCellVoltage": level(low, min_v, min_v - 0.1, False),
            "/Alarms/HighCellVoltage": level(high, max_v + 0.05, max_v + 0.1, True),
            "/Alarms/LowSoc": level(self.soc, 20.0, 10.0, False),
            "/Alarms/StateOfHealth": 0,
            "/Alarms/HighChargeCurrent": level(
                self.current, p.max_charge_current, 1.2 * p.max_charge_current, True),
            "/Alarms/HighDischargeCurrent": level(
                -self.current, p.max_discharge_current, 1.2 * p.max_discharge_current, True),
            "/Alarms/CellImbalance": level(high - low, 0.1, 0.2, True),
            "/Alarms/InternalFailure": 0,
            "/Alarms/HighChargeTemperature": level(temp, 45.0, 55.0, True) if self.current > 0 else 0,
            "/Alarms/LowChargeTemperature": level(temp, 5.0, 0.0, False) if self.current > 0 else 0,
            "/Alarms/HighTemperature": level(temp, 50.0, 60.0, True),
            "/Alarms/LowTemperature": level(temp, -10.0, -20.0, False),
            "/Alarms/BmsCable": 0,
            "/Alarms/HighInternalTemperature": 0,
            "/Alarms/FuseBlown": 0,
        }


def pack_params(count: int, *, cells: int = 16, capacity_ah: float = 280.0,
                socs: Sequence[float] | None = None) -> list[PackParams]:
    """`count` identical packs with distinct serials (and SoCs if given)."""
    return [
        PackParams(cells=cells, capacity_ah=capacity_ah, serial=f"SIM{i + 1:04d}",
                   soc=socs[i] if socs is not None else 50.0)
        for i in range(count)
    ]
