"""Wire types and text units of the aggregate battery's paths (contract 4.1 and 4.8).

Types are fixed per path so a consumer never sees a path switch between `i` and `d`, and doubles are
rounded to the resolution serialbattery publishes so float noise is not sent as a change.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggbatt.bus.service import BusItemService, TextFormatter, unit_text

# Not a known battery ProductId: systemcalc keys quirks (CVL rewrites, forced DVCC/SVS settings,
# even switching the Multi off) on real PIDs (contract 3.3).
PRODUCT_ID = 0xBA48


@dataclass(frozen=True)
class PathSpec:
    kind: type | None
    decimals: int | None = None
    unit: str | None = None

    def text(self) -> TextFormatter | None:
        if self.unit is None:
            return None
        return unit_text(self.unit, self.decimals or 0)


_V = PathSpec(float, 2, "V")
_CELL_V = PathSpec(float, 3, "V")
_A = PathSpec(float, 2, "A")
_W = PathSpec(float, 0, "W")
_AH = PathSpec(float, 1, "Ah")
_PCT = PathSpec(float, 1, "%")
_DEG = PathSpec(float, 1, "°C")
_INT = PathSpec(int)
_STR = PathSpec(str)
_INT_PREFIXES = ("/Alarms/", "/Io/", "/System/NrOf")

SPECS: dict[str, PathSpec] = {
    "/DeviceInstance": _INT,
    "/ProductId": _INT,
    "/Connected": _INT,
    "/Dc/0/Voltage": _V,
    "/Dc/0/Current": _A,
    "/Dc/0/Power": _W,
    "/Dc/0/Temperature": _DEG,
    "/Soc": _PCT,
    "/Soh": _PCT,
    "/Capacity": _AH,
    "/InstalledCapacity": _AH,
    "/ConsumedAmphours": _AH,
    "/TimeToGo": PathSpec(int, None, "s"),
    "/Info/MaxChargeVoltage": _V,
    "/Info/MaxChargeCurrent": PathSpec(float, 1, "A"),
    "/Info/MaxDischargeCurrent": PathSpec(float, 1, "A"),
    "/Info/BatteryLowVoltage": _V,
    "/System/MinCellVoltage": _CELL_V,
    "/System/MaxCellVoltage": _CELL_V,
    "/System/MinCellTemperature": _DEG,
    "/System/MaxCellTemperature": _DEG,
    "/Voltages/Sum": _V,
    "/Voltages/Diff": _CELL_V,
}


def spec_for(path: str, value: object) -> PathSpec:
    """The spec of a known path, else one inferred once from the first value (then kept)."""
    known = SPECS.get(path)
    if known is not None:
        return known
    if path.startswith(("/Voltages/", "/Cells/")):
        return _CELL_V
    if path.startswith(_INT_PREFIXES) or path == "/Balancing":
        return _INT
    if path.endswith("Id") or path.startswith("/Info/"):
        return _STR
    if isinstance(value, (bool, int)):
        return _INT
    if isinstance(value, float):
        return PathSpec(float, 3)
    if isinstance(value, str):
        return _STR
    return PathSpec(None)


def add_spec_path(service: BusItemService, path: str, value: object) -> None:
    spec = spec_for(path, value)
    service.add_path(path, value, kind=spec.kind, decimals=spec.decimals, text=spec.text())
