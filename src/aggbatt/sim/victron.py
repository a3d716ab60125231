"""Simulated Victron devices the daemon reads: Multi (vebus), MPPT, SmartShunt, DC-DC converter.

Each is one service on its own connection with the mandatory paths (victron-contract §3.1) and the paths of
victron-contract §5.1-§5.4 that a battery aggregator reads. Sign conventions are the devices' own:

| Service                        | /Dc/0/Current positive means                                  |
|--------------------------------|---------------------------------------------------------------|
| vebus (Multi)                  | from the Multi into the battery (charging)                    |
| solarcharger (MPPT)            | charging the battery                                          |
| battery (SmartShunt)           | charging the battery                                          |
| dcload (SmartShunt as DC load) | consumption, i.e. out of the battery                          |
| dcdc (Orion)                   | into the battery (victron-contract §5.4: unverified, by analogy)       |

`set_connected(False)` only changes /Connected; the Multi keeps publishing its last current, as a
vebus service without a product may, so a reader has to honour /Connected itself.
Paths that Venus writes into these services (DVCC limits, /Soc of the Multi) are writeable.
"""

from __future__ import annotations

from typing import Any, Literal

from aggbatt.bus.service import unit_text
from aggbatt.sim.device import PathSpec, SimDevice, mandatory_specs, process_version

_VOLTS = unit_text("V", 2)
_AMPS = unit_text("A", 1)
_WATTS = unit_text("W", 0)


class _VictronDevice(SimDevice):
    """A Victron product: mandatory paths plus a DC side with voltage, current and power."""

    product_name = ""
    product_id = 0
    firmware_version = 0
    connection = "VE.Direct"

    def __init__(self, service_class: str, name_suffix: str, device_instance: int,
                 custom_name: str | None, *, voltage: float, current: float) -> None:
        super().__init__(f"com.victronenergy.{service_class}.{name_suffix}", custom_name)
        self.name_suffix = name_suffix
        self.device_instance = device_instance
        self.voltage = float(voltage)
        self.current = float(current)
        self.connected = True

    def set_current(self, amps: float) -> None:
        self.current = float(amps)

    def set_voltage(self, volts: float) -> None:
        self.voltage = float(volts)

    def set_connected(self, on: bool = True) -> None:
        self.connected = bool(on)

    def _specs(self) -> list[PathSpec]:
        return mandatory_specs(firmware_kind=int) + [
            PathSpec("/Dc/0/Voltage", float, 2, _VOLTS),
            PathSpec("/Dc/0/Current", float, 2, _AMPS),
            PathSpec("/Dc/0/Power", float, 0, _WATTS),
        ]

    def _values(self) -> dict[str, Any]:
        return {
            "/Mgmt/ProcessName": f"aggbatt.sim.{type(self).__name__}",
            "/Mgmt/ProcessVersion": process_version(),
            "/Mgmt/Connection": self.connection,
            "/DeviceInstance": self.device_instance,
            "/ProductId": self.product_id,
            "/ProductName": self.product_name,
            "/FirmwareVersion": self.firmware_version,
            "/HardwareVersion": "sim",
            "/Connected": int(self.connected),
            "/CustomName": self.custom_name,
            "/Serial": f"HQSIM{self.device_instance:05d}",
            "/Dc/0/Voltage": self.voltage,
            "/Dc/0/Current": self.current,
            "/Dc/0/Power": self.voltage * self.current,
        }


class SimMulti(_VictronDevice):
    """com.victronenergy.vebus.<suffix>: a MultiPlus on VE.Bus."""

    product_name = "MultiPlus-II 48/5000/70-50"
    product_id = 0x2720
    firmware_version = 0x502
    connection = "VE.Bus"

    def __init__(self, name_suffix: str = "ttyS4", device_instance: int = 276,
                 custom_name: str | None = None, *, voltage: float = 53.0, current: float = 0.0,
                 ess: bool = False) -> None:
        super().__init__("vebus", name_suffix, device_instance, custom_name,
                         voltage=voltage, current=current)
        self.ess = ess
        self.mode = 3

    def _specs(self) -> list[PathSpec]:
        specs = super()._specs() + [
            PathSpec("/State", int),
            PathSpec("/VebusMainState", int),
            PathSpec("/Mode", int, writeable=True),
            PathSpec("/Soc", float, 1, unit_text("%", 1), writeable=True),
            PathSpec("/ExtraBatteryCurrent", float, 2, _AMPS, writeable=True),
            PathSpec("/BatteryOperationalLimits/MaxChargeVoltage", float, 2, _VOLTS, writeable=True),
            PathSpec("/BatteryOperationalLimits/MaxChargeCurrent", float, 1, _AMPS, writeable=True),
            PathSpec("/BatteryOperationalLimits/MaxDischargeCurrent", float, 1, _AMPS, writeable=True),
            PathSpec("/BatteryOperationalLimits/BatteryLowVoltage", float, 2, _VOLTS, writeable=True),
        ]
        if self.ess:
            specs += [PathSpec("/Hub4/AssistantId", int),
                      PathSpec("/Hub/ChargeVoltage", float, 2, _VOLTS)]
        return specs

    def _values(self) -> dict[str, Any]:
        values = super()._values()
        if not self.connected:
            state = 0
        elif self.current > 0:
            state = 3
        elif self.current < 0:
            state = 9
        else:
            state = 8
        values.update({
            "/State": state,
            "/VebusMainState": 9 if self.connected else 2,
            "/Mode": self.mode,
            "/Soc": None,
            "/ExtraBatteryCurrent": None,
            "/BatteryOperationalLimits/MaxChargeVoltage": None,
            "/BatteryOperationalLimits/MaxChargeCurrent": None,
            "/BatteryOperationalLimits/MaxDischargeCurrent": None,
            "/BatteryOperationalLimits/BatteryLowVoltage": None,
        })
        if self.ess:
            values["/Hub4/AssistantId"] = 5
            values["/Hub/ChargeVoltage"] = None
        return values


class SimMppt(_VictronDevice):
    """com.victronenergy.solarcharger.<suffix>: a VE.Direct SmartSolar charger."""

    product_name = "SmartSolar Charger MPPT 150/35"
    product_id = 0xA060
    firmware_version = 0x165

    def __init__(self, name_suffix: str = "ttyS5", device_instance: int = 278,
                 custom_name: str | None = None, *, voltage: float = 53.0, current: float = 0.0,
                 pv_voltage: float = 120.0) -> None:
        super().__init__("solarcharger", name_suffix, device_instance, custom_name,
                         voltage=voltage, current=current)
        self.pv_voltage = pv_voltage

    def _specs(self) -> list[PathSpec]:
        return super()._specs() + [
            PathSpec("/Yield/Power", float, 0, _WATTS),
            PathSpec("/Pv/V", float, 2, _VOLTS),
            PathSpec("/State", int),
            PathSpec("/Link/NetworkMode", int, writeable=True),
            PathSpec("/Link/ChargeVoltage", float, 2, _VOLTS, writeable=True),
            PathSpec("/Link/ChargeCurrent", float, 1, _AMPS, writeable=True),
            PathSpec("/Settings/BmsPresent", int),
            PathSpec("/Settings/ChargeCurrentLimit", float, 1, _AMPS),
        ]

    def _values(self) -> dict[str, Any]:
        values = super()._values()
        values.update({
            "/Yield/Power": self.voltage * max(0.0, self.current),
            "/Pv/V": self.pv_voltage,
            "/State": 3 if self.current > 0 else 0,
            "/Link/NetworkMode": None,
            "/Link/ChargeVoltage": None,
            "/Link/ChargeCurrent": None,
            "/Settings/BmsPresent": 0,
            "/Settings/ChargeCurrentLimit": 35.0,
        })
        return values


ShuntMode = Literal["battery", "dcload"]


class SimShunt(_VictronDevice):
    """A SmartShunt as battery monitor (com.victronenergy.battery.<suffix>, no /Info/*) or as a
    DC load (com.victronenergy.dcload.<suffix>)."""

    product_name = "SmartShunt 500A/50mV"
    product_id = 0xA389
    firmware_version = 0x417

    def __init__(self, name_suffix: str = "ttyS6", device_instance: int = 279,
                 custom_name: str | None = None, *, mode: ShuntMode = "battery",
                 voltage: float = 53.0, current: float = 0.0, soc: float = 50.0,
                 capacity_ah: float = 840.0) -> None:
        if mode not in ("battery", "dcload"):
            raise ValueError(f"shunt mode must be 'battery' or 'dcload', not {mode!r}")
        super().__init__(mode, name_suffix, device_instance, custom_name,
                         voltage=voltage, current=current)
        self.mode = mode
        self.soc = soc
        self.capacity_ah = capacity_ah

    def set_soc(self, soc: float) -> None:
        self.soc = float(soc)

    def _specs(self) -> list[PathSpec]:
        specs = super()._specs()
        if self.mode == "battery":
            specs += [
                PathSpec("/Soc", float, 1, unit_text("%", 1)),
                PathSpec("/TimeToGo", int, text=unit_text("s", 0)),
                PathSpec("/ConsumedAmphours", float, 1, unit_text("Ah", 1)),
                PathSpec("/Dc/1/Voltage", float, 2, _VOLTS),
            ]
        return specs

    def _values(self) -> dict[str, Any]:
        values = super()._values()
        if self.mode == "battery":
            remaining = self.capacity_ah * self.soc / 100.0
            values.update({
                "/Soc": self.soc,
                "/TimeToGo": int(remaining / -self.current * 3600) if self.current < -0.1 else None,
                "/ConsumedAmphours": remaining - self.capacity_ah,
                "/Dc/1/Voltage": None,
            })
        return values


class SimDcdc(_VictronDevice):
    """com.victronenergy.dcdc.<suffix>: an Orion XS charging the bank from another DC source."""

    product_name = "Orion XS 12/12-50A"
    product_id = 0xA3F0
    firmware_version = 0x110

    def __init__(self, name_suffix: str = "ttyS7", device_instance: int = 280,
                 custom_name: str | None = None, *, voltage: float = 53.0, current: float = 0.0,
                 input_voltage: float = 13.2, efficiency: float = 0.95) -> None:
        super().__init__("dcdc", name_suffix, device_instance, custom_name,
                         voltage=voltage, current=current)
        self.input_voltage = input_voltage
        self.efficiency = efficiency

    def _specs(self) -> list[PathSpec]:
        return super()._specs() + [
            PathSpec("/Dc/0/Temperature", float, 1, unit_text("°C", 1)),
            PathSpec("/Dc/In/V", float, 2, _VOLTS),
            PathSpec("/Dc/In/I", float, 2, _AMPS),
            PathSpec("/Dc/In/P", float, 0, _WATTS),
            PathSpec("/State", int),
            PathSpec("/Mode", int),
            PathSpec("/ErrorCode", int),
        ]

    def _values(self) -> dict[str, Any]:
        values = super()._values()
        input_power = self.voltage * max(0.0, self.current) / self.efficiency
        values.update({
            "/Dc/0/Temperature": 30.0,
            "/Dc/In/V": self.input_voltage,
            "/Dc/In/I": input_power / self.input_voltage,
            "/Dc/In/P": input_power,
            "/State": 3 if self.current > 0 else 0,
            "/Mode": 1,
            "/ErrorCode": 0,
        })
        return values
