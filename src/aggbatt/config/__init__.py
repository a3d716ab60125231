"""The TOML configuration: models, loader and error report.

Rules:

- Defaults live only in the packaged ``data/default.toml``. The models declare no defaults: the
  loader deep-merges the user's file over default.toml (tables merge key by key, any other value
  replaces the default) and validates the merged document. A key missing from default.toml is
  therefore a validation error, never a silent fallback.
- Unknown keys are errors (``extra="forbid"``) that name the closest valid key, so a typo can never
  fall back to a default. Types are strict: text where a number belongs is an error; an integer
  where a float belongs is accepted.
- Every error is collected before anything is reported: one ``ConfigError`` lists each bad key with
  its value, why it is wrong and what is allowed. A rule that relates two keys is a validator of the
  later key and reads the earlier one from ``info.data``, so it still runs when unrelated keys of the
  same table are bad (field order in the models matters for that reason).
- pydantic stays at this boundary; the rest of aggbatt reads the frozen ``Config``.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

try:
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

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
ShuntRef = Union[Annotated[int, Field(ge=0)], Text]

# A real config is a few kB with tables two levels deep; anything far beyond is not a config and
# must not cost memory, time or the stack of whoever reads it (check-config, start, SIGHUP).
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NESTING = 16
# VRM instances are small numbers, but drivers use bases such as 512 or 1024 to keep out of each
# other's way, so the bound is generous; a value far outside cannot be a real one, and one that
# does not fit the D-Bus int32 of /DeviceInstance would make the whole service unreadable.
DEVICE_INSTANCE_RANGE = (0, 65535)

# The shipped defaults live in the package's data/ folder, one level above this package.
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                            "default.toml")
DEFAULT_SOURCE = "default.toml"


def _fmt(number: float) -> str:
    return f"{number:g}"


def _entries(count: int) -> str:
    return f"{count} entry" if count == 1 else f"{count} entries"


def _number(
    unit: str = "",
    *,
    ge: Optional[float] = None,
    gt: Optional[float] = None,
    le: Optional[float] = None,
    note: str = "",
    kind: str = "a number",
) -> Any:
    """A required numeric field whose description is the 'allowed' text of its errors."""
    low = f">= {_fmt(ge)}" if ge is not None else f"> {_fmt(gt)}" if gt is not None else ""
    if low and le is not None:
        text = f"{kind} {low} and <= {_fmt(le)}"
    elif low:
        text = f"{kind} {low}"
    else:
        text = kind
    if unit:
        text += f" ({unit})"
    if note:
        text += f"; {note}"
    return Field(ge=ge, gt=gt, le=le, description=text)


def _integer(unit: str = "", *, ge: Optional[int] = None, le: Optional[int] = None, note: str = "") -> Any:
    return _number(unit, ge=ge, le=le, note=note, kind="an integer")


def _cell_voltage(note: str = "") -> Any:
    low, high = CELL_VOLTAGE_RANGE
    return _number("V per cell", ge=low, le=high, note=note)


def _rule(why: str, allowed: str, *, key: Optional[str] = None, value: object = None) -> PydanticCustomError:
    """An error of a rule across keys; `key` names a sub-key when the rule sits on a whole table."""
    ctx: dict[str, Any] = {"why": why, "allowed": allowed}
    if key is not None:
        ctx["key"] = key
        ctx["value"] = value
    return PydanticCustomError("config_rule", "{why}", ctx)


_KNOTS = (
    "at least 2 cell voltages in strictly increasing order "
    f"(V per cell, each {_fmt(CELL_VOLTAGE_RANGE[0])} to {_fmt(CELL_VOLTAGE_RANGE[1])})"
)


def _factors_text(knots_key: str) -> str:
    return f"one factor from 0 to 1 for each knot of {knots_key}"


def _check_knots(knots: list[float]) -> list[float]:
    if len(knots) < 2:
        raise _rule(f"has {_entries(len(knots))}, a table needs at least 2", _KNOTS)
    for i in range(1, len(knots)):
        if knots[i] <= knots[i - 1]:
            raise _rule(
                f"knots must be strictly increasing, but [{i}] = {_fmt(knots[i])} "
                f"is not above [{i - 1}] = {_fmt(knots[i - 1])}",
                _KNOTS,
            )
    return knots


def _check_factors(factors: list[float], knots: Optional[list[float]], knots_key: str) -> list[float]:
    allowed = _factors_text(knots_key)
    if knots is not None and len(factors) != len(knots):
        raise _rule(f"has {_entries(len(factors))} but {knots_key} has {len(knots)}", allowed)
    if knots is None and len(factors) < 2:
        raise _rule(f"has {_entries(len(factors))}, a table needs at least 2", allowed)
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
            raise _rule(
                f"{_show(both)} also listed in discovery.include",
                "a service in at most one of discovery.include and discovery.exclude",
            )
        return exclude

    @field_validator("product_name_contains")
    @classmethod
    def _something_can_match(cls, substrings: list[str], info: ValidationInfo) -> list[str]:
        if not substrings and info.data.get("include") == []:
            raise _rule(
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
            raise _rule(
                f"is shorter than freshness.stale_after ({_fmt(busy)} s)",
                f"a number >= freshness.stale_after ({_fmt(busy)}) and <= 86400 (s)",
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
            raise _rule(
                f"is not below soc.full_cell_voltage ({_fmt(full)} V)",
                f"a cell voltage below soc.full_cell_voltage ({_fmt(full)} V)",
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
            raise _rule(
                "is true while current.shunts lists shunts",
                "either shunts listed in current.shunts or all_shunts = true, not both",
            )
        return all_shunts


class PassthroughChargeConfig(_Table):
    cvl_mode: CvlMode


class OwnChargeConfig(_Table):
    charge_cell_voltage: list[CellVoltage] = Field(
        description="12 cell voltages, January to December "
        f"(V per cell, each {_fmt(CELL_VOLTAGE_RANGE[0])} to {_fmt(CELL_VOLTAGE_RANGE[1])})"
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
            raise _rule(
                f"has {_entries(len(voltages))}, needs one per month",
                "exactly 12 cell voltages, January to December",
            )
        return voltages

    @field_validator("min_cell_voltage")
    @classmethod
    def _min_below_max(cls, low: float, info: ValidationInfo) -> float:
        high = info.data.get("max_cell_voltage")
        if high is not None and low >= high:
            raise _rule(
                f"is not below charge.own.max_cell_voltage ({_fmt(high)} V)",
                f"a cell voltage below charge.own.max_cell_voltage ({_fmt(high)} V)",
            )
        return low

    @field_validator("balancing_cell_voltage")
    @classmethod
    def _balancing_within_cell_limits(cls, balancing: float, info: ValidationInfo) -> float:
        low = info.data.get("min_cell_voltage")
        high = info.data.get("max_cell_voltage")
        allowed = (
            f"a cell voltage from charge.own.min_cell_voltage ({_fmt(low) if low is not None else '?'} V)"
            f" to charge.own.max_cell_voltage ({_fmt(high) if high is not None else '?'} V)"
        )
        if low is not None and balancing < low:
            raise _rule(f"is below charge.own.min_cell_voltage ({_fmt(low)} V)", allowed)
        if high is not None and balancing > high:
            raise _rule(f"is above charge.own.max_cell_voltage ({_fmt(high)} V)", allowed)
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
            raise _rule(
                f"is shorter than twice service.tick_interval ({_fmt(service.tick_interval)} s)",
                f"a number >= {_fmt(shortest)} and <= 120 (s)",
                key="watchdog_timeout",
                value=safety.watchdog_timeout,
            )
        return safety


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: `key` is the dotted path ("" for file-level problems), `message` says why and
    what is allowed, `line` is the line in the checked file when known."""

    key: str
    value: object
    message: str
    line: Optional[int] = None

    def describe(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        if not self.key:
            return f"{where}: {self.message}"
        return f"{where}: {self.key} = {_show(self.value)}\n    {self.message}"


class ConfigError(Exception):
    """The configuration is unusable; `errors` holds every issue, str() is the full report."""

    def __init__(self, errors: Sequence[ConfigIssue], source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.errors)
        lines = [f"{self.source}: {count} configuration error{'' if count == 1 else 's'}"]
        lines += ["  " + issue.describe(self.source).replace("\n", "\n  ") for issue in self.errors]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


@functools.lru_cache(maxsize=1)
def default_toml_text() -> str:
    """The commented default configuration, e.g. to create a user's config.toml from it."""
    # A plain path rather than importlib.resources (0.5 MB more RSS): aggbatt is always installed
    # as files, by pip or by the release bundle.
    with open(DEFAULT_PATH, encoding="utf-8") as handle:
        return handle.read()


@functools.lru_cache(maxsize=1)
def _default_document() -> dict[str, Any]:
    return _parse_toml(default_toml_text(), DEFAULT_SOURCE)


def default_config() -> Config:
    return _validate({}, DEFAULT_SOURCE, "")


def load_config(path: Union[str, os.PathLike[str], None]) -> Config:
    """Load a user file over the defaults; None means the defaults alone."""
    if path is None:
        return default_config()
    source = os.fsdecode(path)
    raw = _read_bounded(source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue("", None, "the file is not UTF-8 text", line)], source) from None
    return parse_config(text, source)


def _read_bounded(source: str) -> bytes:
    """The file's bytes; a device, FIFO or directory is refused without reading from it (a FIFO
    opened non-blocking cannot hang us), and so is a file above MAX_CONFIG_BYTES."""
    def refuse(why: str) -> ConfigError:
        return ConfigError([ConfigIssue("", source, why)], source)

    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refuse("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise refuse(f"the file is larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few kB")
    return raw


def parse_config(text: str, source: str = "<string>") -> Config:
    return _validate(_parse_toml(text, source), source, text)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed document (e.g. {"freshness": {"stale_after": 0.3}}) over the defaults."""
    return _validate(data, source, "")


_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    def refuse(message: str, line: Optional[int] = None) -> ConfigError:
        return ConfigError([ConfigIssue("", None, message, line)], source)

    if len(text) > MAX_CONFIG_BYTES:
        raise refuse(f"the text is larger than {MAX_CONFIG_BYTES:,} characters; a config is a few kB")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _SYNTAX_POSITION.search(message)
        line: Optional[int] = getattr(exc, "lineno", None)
        if position:
            message = f"{message[: position.start()]} (column {position.group(2)})"
            line = int(position.group(1))
        raise refuse(f"TOML syntax error: {message}", line) from None
    except RecursionError:
        raise refuse(f"arrays or tables nested too deeply (at most {MAX_CONFIG_NESTING} levels)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise refuse(f"TOML value not readable: {str(exc).split(';')[0]}") from None
    if _depth(document) > MAX_CONFIG_NESTING:
        raise refuse(f"arrays or tables nested too deeply (at most {MAX_CONFIG_NESTING} levels)")
    return document


def _depth(document: Any) -> int:
    """How deeply lists and tables nest, without recursion (the parser accepts a few hundred)."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        node, level = pending.pop()
        deepest = max(deepest, level)
        if level > MAX_CONFIG_NESTING:
            break
        children = node.values() if isinstance(node, Mapping) else node
        pending.extend((child, level + 1) for child in children
                       if isinstance(child, (Mapping, list)))
    return deepest


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def _validate(user: Mapping[str, Any], source: str, text: str) -> Config:
    merged = _merge(copy.deepcopy(_default_document()), user)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_issues(exc, user, _key_lines(text)), source) from None


# --- turning pydantic errors into ConfigIssues ---------------------------------------------------

_TYPE_ERRORS = {"int_from_float", "float_parsing", "int_parsing", "bool_parsing"}


def _is_type_error(error_type: str) -> bool:
    return error_type.endswith("_type") or error_type in _TYPE_ERRORS


def _issues(exc: ValidationError, user: Mapping[str, Any], lines: Mapping[str, int]) -> list[ConfigIssue]:
    # A union (current.shunts) reports one error per member for the same value; keep the most
    # telling one: a range error says more than "wrong type".
    found: dict[str, tuple[bool, ConfigIssue]] = {}
    for error in exc.errors():
        typed = _is_type_error(error["type"])
        issue = _issue(error, user, lines)
        previous = found.get(issue.key)
        if previous is None or (previous[0] and not typed):
            found[issue.key] = (typed, issue)
    return [issue for _, issue in found.values()]


def _issue(error: Mapping[str, Any], user: Mapping[str, Any], lines: Mapping[str, int]) -> ConfigIssue:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    loc = tuple(error["loc"])
    value = error.get("input")
    if kind == "config_rule" and "key" in ctx:
        loc += (ctx["key"],)
        value = ctx["value"]
    elif kind == "missing":
        value = None
    path, names, field, table = _resolve(loc)
    if kind == "config_rule":
        why, allowed = ctx["why"], ctx["allowed"]
    elif kind == "extra_forbidden":
        why = "unknown key"
        suggestion = _suggest(names, table)
        if suggestion:
            why += f" (did you mean {suggestion}?)"
        section = ".".join(names[:-1])
        keys = ", ".join(table.model_fields)
        allowed = f"the keys of [{section}]: {keys}" if section else f"the tables {keys}"
    else:
        why = _why(kind, ctx, value, error["msg"])
        allowed = _allowed(field)
    message = f"{why}; allowed: {allowed}" if allowed else why
    if kind not in ("extra_forbidden", "missing") and not _is_set(user, names):
        message += " (not set in this file: the value is the default)"
    return ConfigIssue(path, value, message, lines.get(".".join(names)))


def _resolve(loc: tuple[Union[str, int], ...]) -> tuple[str, list[str], Optional[FieldInfo], type[BaseModel]]:
    """Dotted path with [index] parts, the key names alone, the field and the table holding it."""
    model: Optional[type[BaseModel]] = Config
    table: type[BaseModel] = Config
    field: Optional[FieldInfo] = None
    names: list[str] = []
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif model is not None:  # below a leaf, str parts are union member tags
            table = model
            field = model.model_fields.get(part)
            names.append(part)
            path = f"{path}.{part}" if path else part
            model = _table_model(field)
    return path, names, field, table


def _table_model(field: Optional[FieldInfo]) -> Optional[type[BaseModel]]:
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _why(kind: str, ctx: Mapping[str, Any], value: object, fallback: str) -> str:
    bounds = {
        "greater_than_equal": ("must be at least", "ge"),
        "greater_than": ("must be greater than", "gt"),
        "less_than_equal": ("must be at most", "le"),
        "less_than": ("must be less than", "lt"),
    }
    if kind in bounds:
        words, name = bounds[kind]
        return f"{words} {_fmt(ctx[name])}"
    if kind == "missing":
        return "is missing (default.toml lacks it too)"
    if kind == "finite_number":
        return "must be a finite number, not nan or inf"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return "has the wrong form"
    if kind == "literal_error":
        return "is not one of the choices"
    if _is_type_error(kind):
        return f"has the wrong type ({_toml_type(value)})"
    return fallback


def _allowed(field: Optional[FieldInfo]) -> str:
    if field is None:
        return ""
    if field.description:
        return field.description
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(_show(choice) for choice in get_args(annotation))
    if annotation is bool:
        return "true or false"
    model = _table_model(field)
    if model is not None:
        return "a table with the keys " + ", ".join(model.model_fields)
    return ""


def _normalise(key: str) -> str:
    return key.strip().lower().replace("-", "_")


@functools.lru_cache(maxsize=1)
def _all_paths() -> tuple[str, ...]:
    paths: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            paths.append(prefix + name)
            sub = _table_model(field)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")

    walk(Config, "")
    return tuple(paths)


def _suggest(names: list[str], table: type[BaseModel]) -> Optional[str]:
    """The valid key the user most likely meant: same table first, then the same name elsewhere."""
    prefix = ".".join(names[:-1] + [""]) if len(names) > 1 else ""
    wanted = _normalise(names[-1])
    here = list(table.model_fields)
    if wanted in here:
        return prefix + wanted
    elsewhere = [path for path in _all_paths() if path.rsplit(".", 1)[-1] == wanted]
    if elsewhere:
        return elsewhere[0]
    close = difflib.get_close_matches(wanted, here, n=1, cutoff=0.6)
    if close:
        return prefix + close[0]
    started = [key for key in here if key.startswith(wanted)]
    if started:
        return prefix + started[0]
    leaves = {path.rsplit(".", 1)[-1]: path for path in reversed(_all_paths())}
    close = difflib.get_close_matches(wanted, list(leaves), n=1, cutoff=0.8)
    return leaves[close[0]] if close else None


def _is_set(document: Mapping[str, Any], names: list[str]) -> bool:
    node: object = document
    for name in names:
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
    return True


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    return type(value).__name__


def _toml(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, BaseModel):
        return _toml(value.model_dump())
    if isinstance(value, Mapping):
        items = ", ".join(f"{key} = {_toml(item)}" for key, item in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


def _show(value: object, limit: int = 100) -> str:
    text = _toml(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- where keys are in the user's text (best effort, for line numbers in the report) ------------

_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(r"""^\s*([A-Za-z0-9_\-."' ]+?)\s*=""")


def _split_key(dotted: str) -> list[str]:
    return [part.strip().strip("\"'") for part in dotted.split(".")]


def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            _record(lines, table, number)
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            _record(lines, table + _split_key(assignment.group(1)), number)
    return lines


def _record(lines: dict[str, int], names: list[str], number: int) -> None:
    """The first line that mentions a key or any of its parent tables."""
    for end in range(1, len(names) + 1):
        lines.setdefault(".".join(names[:end]), number)
