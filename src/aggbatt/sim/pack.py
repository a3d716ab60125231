"""A simulated dbus-serialbattery pack on the bus: sim/pack_model.py's physics, published the way
serialbattery publishes through velib.

`step(dt, current)` advances the model; `publish()` writes the resulting values into the BusItem
service, which sends one PropertiesChanged per changed path and nothing when no path changed. The
connection life cycle and the device faults (frozen, hung, vanished, invalidated paths, raw
overrides) come from sim/device.py; the BMS faults are the model's, plus the driver's lost link,
which shows on the bus only: V/I/P invalid, the module offline, the last limits held.
"""

from __future__ import annotations

from typing import Any

from aggbatt.bus.service import SignalStyle, unit_text
from aggbatt.sim.device import (
    PathSpec,
    SimDevice,
    mandatory_specs,
    next_device_instance,
    process_version,
)
from aggbatt.sim.pack_model import MinuteFigures, PackModel, PackParams

SERIALBATTERY_PRODUCT_ID = 0xBA77
SIM_VERSION = "aggbatt-sim 1"
_LINK_ALARM_AFTER = 60.0

ALARMS = (
    "LowVoltage", "HighVoltage", "LowCellVoltage", "HighCellVoltage", "LowSoc", "StateOfHealth",
    "HighChargeCurrent", "HighDischargeCurrent", "CellImbalance", "InternalFailure",
    "HighChargeTemperature", "LowChargeTemperature", "HighTemperature", "LowTemperature",
    "BmsCable", "HighInternalTemperature", "FuseBlown",
)


class SimPack(SimDevice):
    """A dbus-serialbattery service for one simulated pack (see the module docstring).

    The model's readings and BMS controls are offered here under the same names, so a bank, a
    scenario or a test drives the pack without reaching into the model.
    """

    signals: SignalStyle = "properties"

    def __init__(self, params: PackParams, *, name_suffix: str) -> None:
        super().__init__(f"com.victronenergy.battery.{name_suffix}", params.custom_name)
        self.model = PackModel(params)
        self.params = params
        self.name_suffix = name_suffix
        self.device_instance = (
            params.device_instance if params.device_instance is not None else next_device_instance()
        )
        self.product_name = params.product_name or f"SerialBattery(Simulated) {params.serial}"
        self._cell_names = [f"/Voltages/Cell{n}" for n in range(1, params.cells + 1)]
        self._balance_names = [f"/Balances/Cell{n}" for n in range(1, params.cells + 1)]
        self._held: dict[str, Any] = {}

    # ----- the model, under the names the pack always had -------------------------------------

    @property
    def soc(self) -> float:
        return self.model.soc

    @property
    def current(self) -> float:
        return self.model.current

    @property
    def measured_current(self) -> float:
        return self.model.measured_current

    @property
    def temperature(self) -> float:
        return self.model.temperature

    @property
    def elapsed(self) -> float:
        return self.model.elapsed

    @property
    def cell_voltages(self) -> list[float]:
        return self.model.cell_voltages

    @property
    def ccl(self) -> float:
        return self.model.ccl

    @property
    def dcl(self) -> float:
        return self.model.dcl

    @property
    def cvl(self) -> float:
        return self.model.cvl

    @property
    def charge_mode(self) -> str:
        return self.model.charge_mode

    @property
    def charge_limitation(self) -> str:
        return self.model.charge_limitation

    @property
    def discharge_limitation(self) -> str:
        return self.model.discharge_limitation

    @property
    def allow_charge(self) -> bool:
        return self.model.allow_charge

    @property
    def allow_discharge(self) -> bool:
        return self.model.allow_discharge

    def accepts(self, current: float) -> bool:
        """Whether the BMS lets `current` (+ = charging) through its FETs."""
        return self.model.accepts(current)

    def step(self, dt: float, current: float) -> None:
        """Advance `dt` seconds with `current` amps (+ = charging) offered to the pack."""
        self.model.step(dt, current)

    # ----- faults ---------------------------------------------------------------------------------

    def link_lost(self, on: bool = True) -> None:
        """serialbattery's communication loss: V/I/P invalid, module offline, limits held."""
        if on and not self.model.link_down:
            self._held = self._values()
        self.model.lose_link(on)

    def block_charge(self, on: bool = True) -> None:
        self.model.block_charge(on)

    def block_discharge(self, on: bool = True) -> None:
        self.model.block_discharge(on)

    def drift_cell(self, cell: int, mv: float) -> None:
        """Offset cell `cell` (1-based, as in /Voltages/Cell<n>) by `mv` millivolts from now on."""
        self.model.drift_cell(cell, mv)

    def set_temperature(self, celsius: float) -> None:
        self.model.set_temperature(celsius)

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
        if self.model.link_down:
            values = dict(self._held)
            lost_for = self.model.lost_for
            values.update({
                "/Dc/0/Voltage": None, "/Dc/0/Current": None, "/Dc/0/Power": None,
                "/System/NrOfModulesOnline": 0, "/System/NrOfModulesOffline": 1,
                "/ConnectionInformation": f"Lost for {int(lost_for)}s",
                "/Alarms/BmsCable": 1 if lost_for >= _LINK_ALARM_AFTER else 0,
                "/CustomName": self.custom_name,
            })
            return values
        return self._fresh_values()

    def _fresh_values(self) -> dict[str, Any]:
        m = self.model
        p = m.params
        cells = m.cell_voltages
        voltage = sum(cells)
        high, low = max(cells), min(cells)
        high_id, low_id = cells.index(high) + 1, cells.index(low) + 1
        remaining = p.capacity_ah * m.soc / 100.0
        has_t = p.has_temperature
        temp = m.temperature if has_t else None
        allow_charge, allow_discharge = int(m.allow_charge), int(m.allow_discharge)
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
            "/Soc": m.soc,
            "/Soh": 100.0,
            "/Capacity": remaining,
            "/InstalledCapacity": p.capacity_ah,
            "/ConsumedAmphours": remaining - p.capacity_ah,
            "/CurrentAvg": m.current_avg,
            "/Dc/0/Voltage": voltage,
            "/Dc/0/Current": m.measured_current,
            "/Dc/0/Power": voltage * m.measured_current,
            "/Dc/0/Temperature": temp,
            "/Info/BatteryLowVoltage": p.cells * p.min_cell_voltage,
            "/Info/MaxChargeVoltage": m.cvl,
            "/Info/MaxChargeCellVoltage": m.cvl / p.cells,
            "/Info/MaxChargeCurrent": m.ccl,
            "/Info/MaxDischargeCurrent": m.dcl,
            "/Info/ChargeMode": m.charge_mode,
            "/Info/ChargeModeDebug": "",
            "/Info/ChargeModeDebugFloat": "",
            "/Info/ChargeModeDebugBulk": "",
            "/Info/ChargeLimitation": m.charge_limitation,
            "/Info/DischargeLimitation": m.discharge_limitation,
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
            "/Balancing": int(m.balancing),
            "/Heating": None,
            "/Voltages/Sum": voltage,
            "/Voltages/Diff": high - low,
            **self._minute_values(),
            "/History/Clear": 0,
            "/History/CanBeCleared": 0,
            "/Settings/HasTemperature": int(has_t),
            "/Settings/HasSettings": 0,
            "/JsonData": None,
        }
        values.update(self._alarms(voltage, high, low))
        values.update(zip(self._cell_names, cells, strict=True))
        values.update((name, int(on)) for name, on in zip(self._balance_names, m.balancing_cells(), strict=True))
        return values

    def _minute_values(self) -> dict[str, Any]:
        f: MinuteFigures = self.model.minute
        return {
            "/TimeToGo": f.time_to_go,
            "/History/DeepestDischarge": f.deepest_discharge,
            "/History/LastDischarge": f.deepest_discharge,
            "/History/AverageDischarge": f.deepest_discharge,
            "/History/TotalAhDrawn": f.total_ah_drawn,
            "/History/ChargeCycles": f.charge_cycles,
            "/History/FullDischarges": 0,
            "/History/MinimumVoltage": f.min_voltage,
            "/History/MaximumVoltage": f.max_voltage,
            "/History/MinimumCellVoltage": f.min_cell,
            "/History/MaximumCellVoltage": f.max_cell,
            "/History/MinimumTemperature": f.min_temp,
            "/History/MaximumTemperature": f.max_temp,
            "/History/TimeSinceLastFullCharge": f.since_full,
            "/History/AutomaticSyncs": 0,
            "/History/LowVoltageAlarms": 0,
            "/History/HighVoltageAlarms": 0,
            "/History/DischargedEnergy": f.discharged_kwh,
            "/History/ChargedEnergy": f.charged_kwh,
        }

    def _alarms(self, voltage: float, high: float, low: float) -> dict[str, int]:
        m = self.model
        p = m.params
        temp = m.temperature if p.has_temperature else None

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
            "/Alarms/LowSoc": level(m.soc, 20.0, 10.0, False),
            "/Alarms/StateOfHealth": 0,
            "/Alarms/HighChargeCurrent": level(
                m.current, p.max_charge_current, 1.2 * p.max_charge_current, True),
            "/Alarms/HighDischargeCurrent": level(
                -m.current, p.max_discharge_current, 1.2 * p.max_discharge_current, True),
            "/Alarms/CellImbalance": level(high - low, 0.1, 0.2, True),
            "/Alarms/InternalFailure": 0,
            "/Alarms/HighChargeTemperature": level(temp, 45.0, 55.0, True) if m.current > 0 else 0,
            "/Alarms/LowChargeTemperature": level(temp, 5.0, 0.0, False) if m.current > 0 else 0,
            "/Alarms/HighTemperature": level(temp, 50.0, 60.0, True),
            "/Alarms/LowTemperature": level(temp, -10.0, -20.0, False),
            "/Alarms/BmsCable": 0,
            "/Alarms/HighInternalTemperature": 0,
            "/Alarms/FuseBlown": 0,
        }
