"""Wire types and text units of the aggregate battery's paths (victron-contract §4.1 and §4.8).

Types are fixed per path so a consumer never sees a path switch between `i` and `d`, and doubles are
rounded to the resolution serialbattery publishes so float noise is not sent as a change.
"""

from __future__ import annotations

from dataclasses import dataclass

from aggbatt.bus.service import BusItemService, TextFormatter, unit_text
from aggbatt.core.pages import INFO_PATHS, PACKS_COUNT

# Not a known battery ProductId: systemcalc keys quirks (CVL rewrites, forced DVCC/SVS settings,
# even switching the Multi off) on real PIDs (victron-contract §3.3).
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
_A1 = PathSpec(float, 1, "A")
_KWH = PathSpec(float, 2, "kWh")
_INT_PREFIXES = ("/Alarms/", "/Io/", "/System/NrOf")

# /Packs/<n>/<leaf> (aggbatt.core.pages): the types of the aggregate's own paths of that meaning; a
# pack's current to 0.1 A, as its BMS's reading noise would otherwise be a change every refresh.
PACK_SPECS: dict[str, PathSpec] = {
    "Id": _STR, "Name": _STR, "Service": _STR, "State": _STR, "Reason": _STR,
    "DataAge": PathSpec(int, None, "s"),
    "Dc/0/Voltage": _V, "Dc/0/Current": _A1, "Soc": _PCT,
    "Info/MaxChargeVoltage": _V, "Info/MaxChargeCurrent": _A1, "Info/MaxDischargeCurrent": _A1,
    "BlockingCharge": _INT, "BlockingDischarge": _INT, "BlockingReason": _STR, "Holds": _STR,
}

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
    "/Info/MaxChargeCurrent": _A1,
    "/Info/MaxDischargeCurrent": _A1,
    "/Info/BatteryLowVoltage": _V,
    "/System/MinCellVoltage": _CELL_V,
    "/System/MaxCellVoltage": _CELL_V,
    "/System/MinCellTemperature": _DEG,
    "/System/MaxCellTemperature": _DEG,
    "/Voltages/Sum": _V,
    "/Voltages/Diff": _CELL_V,
    "/System/BatteriesParallel": _INT,
    "/System/BatteriesSeries": _INT,
    "/History/ChargedEnergy": _KWH,
    "/History/DischargedEnergy": _KWH,
    "/History/MinimumVoltage": _V,
    "/History/MaximumVoltage": _V,
    "/History/MinimumCellVoltage": _CELL_V,
    "/History/MaximumCellVoltage": _CELL_V,
    "/History/MinimumTemperature": _DEG,
    "/History/MaximumTemperature": _DEG,
    PACKS_COUNT: _INT,
    **dict.fromkeys(INFO_PATHS, _STR),
}


def spec_for(path: str, value: object) -> PathSpec:
    """The spec of a known path, else one inferred once from the first value (then kept)."""
    known = SPECS.get(path)
    if known is not None:
        return known
    if path.startswith("/Packs/"):
        leaf = PACK_SPECS.get(path.split("/", 3)[-1])
        if leaf is not None:
            return leaf
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
