"""The configuration's models: every table, key, bound and rule across keys.

The models declare no defaults: those live only in the packaged ``data/default.toml``, which the
loader merges under the user's file, so a key missing from default.toml is a validation error, never
a silent fallback. Unknown keys are errors (``extra="forbid"``) and types are strict: text where a
number belongs is an error; an integer where a float belongs is accepted. A field's description is
the "allowed" text of its errors. A rule that relates two keys is a validator of the later key and
reads the earlier one from ``info.data``, so it still runs when unrelated keys of the same table are
bad (field order in the models matters for that reason).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from aggbatt.config.errors import fmt, rule, show

PackLostPolicy = Literal["degrade", "block_charge", "block"]
TemperatureMode = Literal["max", "mean", "min"]
InternalErrorPolicy = Literal["dcl_min_pack", "block"]
SocStrategyName = Literal["bms_average", "coulomb_counter"]
CurrentSourceName = Literal["bms_sum", "victron_devices"]
SourceLostPolicy = Literal["fallback", "block"]
ChargeStrategyName = Literal["passthrough", "own"]
CvlMode = Literal["min", "absorption_hold"]
LogLevel = Literal["debug", "info", "warning", "error"]

# No lithium chemistry has cells outside this range; a value outside it is almost always a pack
# voltage typed where a cell voltage belongs.
CELL_VOLTAGE_RANGE = (1.0, 4.5)

CellVoltage = Annotated[float, Field(ge=CELL_VOLTAGE_RANGE[0], le=CELL_VOLTAGE_RANGE[1])]
Factor = Annotated[float, Field(ge=0.0, le=1.0)]
Text = Annotated[str, Field(min_length=1)]
ShuntRef = Annotated[int, Field(ge=0)] | Text

# VRM instances are small numbers, but drivers use bases such as 512 or 1024 to keep out of each
# other's way, so the bound is generous; a value far outside cannot be a real one, and one that
# does not fit the D-Bus int32 of /DeviceInstance would make the whole service unreadable.
DEVICE_INSTANCE_RANGE = (0, 65535)


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def _number(
    unit: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    note: str = "",
    kind: str = "a number",
) -> Any:
    """A required numeric field whose description is the 'allowed' text of its errors."""
    low = f">= {fmt(ge)}" if ge is not None else f"> {fmt(gt)}" if gt is not None else ""
    if low and le is not None:
        text = f"{kind} {low} and <= {fmt(le)}"
    elif low:
        text = f"{kind} {low}"
    else:
        text = kind
    if unit:
        text += f" ({unit})"
    if note:
        text += f"; {note}"
    return Field(ge=ge, gt=gt, le=le, description=text)


def _integer(unit: str = "", *, ge: int | None = None, le: int | None = None, note: str = "") -> Any:
    return _number(unit, ge=ge, le=le, note=note, kind="an integer")


def _cell_voltage(note: str = "") -> Any:
    low, high = CELL_VOLTAGE_RANGE
    return _number("V per cell", ge=low, le=high, note=note)


_KNOTS = (
    "at least 2 cell voltages in strictly increasing order "
    f"(V per cell, each {fmt(CELL_VOLTAGE_RANGE[0])} to {fmt(CELL_VOLTAGE_RANGE[1])})"
)


def _factors_text(knots_key: str) -> str:
    return f"one factor from 0 to 1 for each knot of {knots_key}"


def _check_knots(knots: list[float]) -> list[float]:
    if len(knots) < 2:
        raise rule(f"has {_entries(len(knots))}, a table needs at least 2", _KNOTS)
    for i in range(1, len(knots)):
        if knots[i] <= knots[i - 1]:
            raise rule(
                f"knots must be strictly increasing, but [{i}] = {fmt(knots[i])} "
                f"is not above [{i - 1}] = {fmt(knots[i - 1])}",
                _KNOTS,
            )
    return knots


def _check_factors(factors: list[float], knots: list[float] | None, knots_key: str) -> list[float]:
    allowed = _factors_text(knots_key)
    if knots is not None and len(factors) != len(knots):
        raise rule(f"has {_entries(len(factors))} but {knots_key} has {len(knots)}", allowed)
    if knots is None and len(factors) < 2:
        raise rule(f"has {_entries(len(factors))}, a table needs at least 2", allowed)
    return factors


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ServiceConfig(_Table):
    name: str = Field(
        pattern=r"^com\.victronenergy\.battery(\.[A-Za-z_][A-Za-z0-9_-]*)+$",
        max_length=255,  # the D-Bus limit of a bus name
        description='a D-Bus service name starting with "com.victronenergy.battery." '
                    "(at most 255 characters)",
    )
    unique_id: str = Field(
        pattern=r"^[A-Za-z0-9_]+$",
        description="letters, digits and underscores (it becomes part of a settings path)",
    )
    device_instance: int = _integer(ge=DEVICE_INSTANCE_RANGE[0], le=DEVICE_INSTANCE_RANGE[1])
    product_name: str = Field(min_length=1, description="non-empty text")
    tick_interval: float = _number("s", ge=0.1, le=10)
    debounce: float = _number("s", ge=0, le=0.5)
    select_as_battery: bool


class DiscoveryConfig(_Table):
    include: list[Text] = Field(description="a list of service names, /Serial or /CustomName values")
    exclude: list[Text] = Field(description="a list of service names, /Serial or /CustomName values")
    product_name_contains: list[Text] = Field(description="a list of non-empty /ProductName substrings")
    expected_packs: int = _integer(ge=0, note="0 = no expectation")
    cell_voltages: bool
    history: bool

    @field_validator("exclude")
    @classmethod
    def _not_included_and_excluded(cls, exclude: list[str], info: ValidationInfo) -> list[str]:
        both = sorted(set(exclude) & set(info.data.get("include", ())))
        if both:
            raise rule(
                f"{show(both)} also listed in discovery.include",
                "a service in at most one of discovery.include and discovery.exclude",
            )
        return exclude

    @field_validator("product_name_contains")
    @classmethod
    def _something_can_match(cls, substrings: list[str], info: ValidationInfo) -> list[str]:
        if not substrings and info.data.get("include") == []:
            raise rule(
                "is empty while discovery.include is empty too, so no service can ever be a pack",
                "at least one substring here, or services listed in discovery.include",
            )
        return substrings


class FreshnessConfig(_Table):
    stale_after: float = _number("s", gt=0, le=3600)
    stale_after_idle: float = _number("s", gt=0, le=86400, note="at least freshness.stale_after")
    idle_current: float = _number("A", ge=0)
    readmit_after: float = _number("s", ge=0, le=3600)
    on_pack_lost: PackLostPolicy

    @field_validator("stale_after_idle")
    @classmethod
    def _idle_not_shorter(cls, idle: float, info: ValidationInfo) -> float:
        busy = info.data.get("stale_after")
        if busy is not None and idle < busy:
            raise rule(
                f"is shorter than freshness.stale_after ({fmt(busy)} s)",
                f"a number >= freshness.stale_after ({fmt(busy)}) and <= 86400 (s)",
            )
        return idle


class AggregationConfig(_Table):
    temperature: TemperatureMode


class SafetyConfig(_Table):
    on_internal_error: InternalErrorPolicy
    watchdog_timeout: float = _number("s", ge=2, le=120, note="at least twice service.tick_interval")


class SocConfig(_Table):
    strategy: SocStrategyName
    charge_efficiency: float = _number(ge=0.5, le=1)
    save_interval: float = _number("s", gt=0)
    save_precision: float = _number("fraction of the capacity", gt=0, le=0.1)
    max_state_age: float = _number("s", gt=0)
    full_cell_voltage: float = _cell_voltage()
    empty_cell_voltage: float = _cell_voltage("below soc.full_cell_voltage")
    zero_soc_reset: bool
    tail_current: float = _number("A", ge=0, note="0 = off")
    full_hold_time: float = _number("s", ge=0, note="0 = off")
    time_to_go_to_min_soc: bool

    @field_validator("empty_cell_voltage")
    @classmethod
    def _empty_below_full(cls, empty: float, info: ValidationInfo) -> float:
        full = info.data.get("full_cell_voltage")
        if full is not None and empty >= full:
            raise rule(
                f"is not below soc.full_cell_voltage ({fmt(full)} V)",
                f"a cell voltage below soc.full_cell_voltage ({fmt(full)} V)",
            )
        return empty


class CurrentConfig(_Table):
    source: CurrentSourceName
    on_source_lost: SourceLostPolicy
    shunts: list[ShuntRef] = Field(
        description="a list of SmartShunts, each a device instance (integer >= 0) "
        "or a /CustomName (non-empty text); empty = none"
    )
    all_shunts: bool
    shunt_alone: bool
    dcload_sign: Literal[-1, 1]
    include_dcdc: bool
    stale_after: float = _number("s", gt=0, le=3600)

    @field_validator("all_shunts")
    @classmethod
    def _one_way_to_choose_shunts(cls, all_shunts: bool, info: ValidationInfo) -> bool:
        if all_shunts and info.data.get("shunts"):
            raise rule(
                "is true while current.shunts lists shunts",
                "either shunts listed in current.shunts or all_shunts = true, not both",
            )
        return all_shunts


class PassthroughChargeConfig(_Table):
    cvl_mode: CvlMode


class OwnChargeConfig(_Table):
    charge_cell_voltage: list[CellVoltage] = Field(
        description="12 cell voltages, January to December "
        f"(V per cell, each {fmt(CELL_VOLTAGE_RANGE[0])} to {fmt(CELL_VOLTAGE_RANGE[1])})"
    )
    max_charge_current: float = _number("A", ge=0, le=10000)
    max_discharge_current: float = _number("A", ge=0, le=10000)
    max_cell_voltage: float = _cell_voltage()
    min_cell_voltage: float = _cell_voltage("below charge.own.max_cell_voltage")
    min_cell_hysteresis: float = _number("V", ge=0, le=1)
    balancing_cell_voltage: float = _cell_voltage(
        "from charge.own.min_cell_voltage to charge.own.max_cell_voltage"
    )
    balancing_repetition: int = _integer("days", ge=1, le=365)
    cell_diff_max: float = _number("V", gt=0, le=1)
    balancing_tolerance: float = _number("V per cell", ge=0, le=1)
    balancing_timeout: float = _number("s", gt=0)
    cell_charge_voltages: list[CellVoltage] = Field(description=_KNOTS)
    cell_charge_factors: list[Factor] = Field(description=_factors_text("charge.own.cell_charge_voltages"))
    cell_discharge_voltages: list[CellVoltage] = Field(description=_KNOTS)
    cell_discharge_factors: list[Factor] = Field(
        description=_factors_text("charge.own.cell_discharge_voltages")
    )
    dynamic_cvl: bool
    cvl_hold_time: float = _number("s", ge=0, le=3600)
    cvl_recovery_rate: float = _number("V/s", gt=0, le=0.1)
    cvl_gain: float = _number("V per V of cell over-voltage", gt=0, le=10)

    @field_validator("charge_cell_voltage")
    @classmethod
    def _one_per_month(cls, voltages: list[float]) -> list[float]:
        if len(voltages) != 12:
            raise rule(
                f"has {_entries(len(voltages))}, needs one per month",
                "exactly 12 cell voltages, January to December",
            )
        return voltages

    @field_validator("min_cell_voltage")
    @classmethod
    def _min_below_max(cls, low: float, info: ValidationInfo) -> float:
        high = info.data.get("max_cell_voltage")
        if high is not None and low >= high:
            raise rule(
                f"is not below charge.own.max_cell_voltage ({fmt(high)} V)",
                f"a cell voltage below charge.own.max_cell_voltage ({fmt(high)} V)",
            )
        return low

    @field_validator("balancing_cell_voltage")
    @classmethod
    def _balancing_within_cell_limits(cls, balancing: float, info: ValidationInfo) -> float:
        low = info.data.get("min_cell_voltage")
        high = info.data.get("max_cell_voltage")
        allowed = (
            f"a cell voltage from charge.own.min_cell_voltage ({fmt(low) if low is not None else '?'} V)"
            f" to charge.own.max_cell_voltage ({fmt(high) if high is not None else '?'} V)"
        )
        if low is not None and balancing < low:
            raise rule(f"is below charge.own.min_cell_voltage ({fmt(low)} V)", allowed)
        if high is not None and balancing > high:
            raise rule(f"is above charge.own.max_cell_voltage ({fmt(high)} V)", allowed)
        return balancing

    @field_validator("cell_charge_voltages", "cell_discharge_voltages")
    @classmethod
    def _knots(cls, knots: list[float]) -> list[float]:
        return _check_knots(knots)

    @field_validator("cell_charge_factors")
    @classmethod
    def _charge_factors(cls, factors: list[float], info: ValidationInfo) -> list[float]:
        return _check_factors(factors, info.data.get("cell_charge_voltages"), "charge.own.cell_charge_voltages")

    @field_validator("cell_discharge_factors")
    @classmethod
    def _discharge_factors(cls, factors: list[float], info: ValidationInfo) -> list[float]:
        return _check_factors(
            factors, info.data.get("cell_discharge_voltages"), "charge.own.cell_discharge_voltages"
        )


class ChargeConfig(_Table):
    strategy: ChargeStrategyName
    passthrough: PassthroughChargeConfig
    own: OwnChargeConfig


class FeedinConfig(_Table):
    guard: bool
    also_when_blocking: bool


class LoggingConfig(_Table):
    level: LogLevel


class Config(_Table):
    service: ServiceConfig
    discovery: DiscoveryConfig
    freshness: FreshnessConfig
    aggregation: AggregationConfig
    safety: SafetyConfig
    soc: SocConfig
    current: CurrentConfig
    charge: ChargeConfig
    feedin: FeedinConfig
    logging: LoggingConfig

    @field_validator("safety")
    @classmethod
    def _watchdog_outlasts_ticks(cls, safety: SafetyConfig, info: ValidationInfo) -> SafetyConfig:
        service = info.data.get("service")
        if service is not None and safety.watchdog_timeout < 2 * service.tick_interval:
            shortest = max(2.0, 2 * service.tick_interval)
            raise rule(
                f"is shorter than twice service.tick_interval ({fmt(service.tick_interval)} s)",
                f"a number >= {fmt(shortest)} and <= 120 (s)",
                key="watchdog_timeout",
                value=safety.watchdog_timeout,
            )
        return safety

