"""VictronDevices: the bank current measured by Victron devices instead of the packs' BMSes.

Rules (sign: + = into the battery, victron-contract §5.1-§5.4):

- Sum mode (default): I = sum of Multi/Quattro /Dc/0/Current (each vebus service only while its
  /Connected is 1, as systemcalc does: a vebus service exists without a connected product, and a
  Multi switched off carries no current)
  + every solar charger's /Dc/0/Current (battery side, its load output already netted)
  + every dcdc /Dc/0/Current when `include_dcdc`
  + selected battery-mode shunts + `dcload_sign` x selected dcload shunts (default -1: a DC load
  shunt reads + for consumption, victron-contract §5.3).
- `shunt_alone`: I = sum of the selected battery-mode shunts; they measure the whole bank, so
  chargers and DC-load shunts are not added.
- Shunts are selected by /DeviceInstance (int) or by /CustomName or service name (str), or all of
  them with `all_shunts`. A battery service that has a charge limit path (CVL/CCL/DCL, even an
  invalid one) is a BMS, never a shunt (shunts publish no /Info/* paths, victron-contract §5.3); with
  `all_shunts` a battery service is a shunt when its /ProductName names one, as packs.py decides.
  Every dcload service is a shunt in DC-load mode. An empty selection is valid.
- The source is LOST, and the BMS sum is used instead (`on_source_lost = "fallback"`), with
  CCL/DCL 0 on top (`"block"`: the result's `block` flag, applied by the engine through
  `block_limits` whatever the charge strategy returned), while any used device
  - reports a current that is None, NaN or not a number,
  - is a solar charger, DC-DC converter or shunt whose /Connected is not 1: its driver lost the
    link to the device,
  - vanished: it was seen since start and its service is gone (a device removed for good is
    forgotten at the next restart),
  - is a configured shunt that is not on the bus, or no device at all is there to measure.
  Silence is not a fault: a Victron driver sends only changes, so a DC-load shunt at a constant
  load or an MPPT at a constant output may publish nothing for minutes. Its drivers report a lost
  device by removing the service or setting /Connected 0, so a present, connected device is live
  however long its reading stays the same.
- Start: during the first `stale_after` seconds devices are still being discovered; a lost source
  falls back without a warning and does not block. After that each episode gives one warning
  event naming the reasons and one event when the Victron current is back. Never an exception.
- /Dc/0/Power = V x I (bank voltage: mean of the online packs) while the current comes from the
  Victron devices; the BMS power sum otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aggbatt.core.events import Event, VictronCurrentBack, VictronCurrentLost
from aggbatt.core.packs import BMS_PATHS, SHUNT_NAMES
from aggbatt.core.strategies import ChargeLimits, CurrentResult, TickContext
from aggbatt.core.strategies.current import BmsSum

VEBUS = "com.victronenergy.vebus."
SOLARCHARGER = "com.victronenergy.solarcharger."
DCDC = "com.victronenergy.dcdc."
BATTERY = "com.victronenergy.battery."
DCLOAD = "com.victronenergy.dcload."

_SHUNT_ID = ("/DeviceInstance", "/CustomName", "/ProductName")
_LIVE = ("/Connected", "/Dc/0/Current")
SERVICE_PATHS: dict[str, tuple[str, ...]] = {
    "vebus": _LIVE,
    "solarcharger": _LIVE,
    "dcdc": _LIVE,
    "dcload": (*_LIVE, *_SHUNT_ID),
    "battery": (*_LIVE, *_SHUNT_ID, *BMS_PATHS),
}
"""Paths to follow per service class (the name's third dotted part)."""


class Reading(Protocol):
    """A monitored service as the engine sees it (structural: any object with these fields).
    Read-only, so frozen dataclasses such as ServiceReading fit."""

    @property
    def service(self) -> str: ...

    @property
    def values(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class VictronParams:
    shunts: tuple[int | str, ...] = ()
    all_shunts: bool = False
    shunt_alone: bool = False
    dcload_sign: float = -1.0
    include_dcdc: bool = False
    stale_after: float = 10.0
    block_on_loss: bool = False
    ignore: frozenset[str] = frozenset()   # services that are never shunts (the aggregate itself)

    @classmethod
    def from_config(cls, config: Any) -> VictronParams:
        """From [current]."""
        current = config.current
        return cls(
            shunts=tuple(current.shunts),
            all_shunts=current.all_shunts,
            shunt_alone=current.shunt_alone,
            dcload_sign=float(current.dcload_sign),
            include_dcdc=current.include_dcdc,
            stale_after=current.stale_after,
            block_on_loss=current.on_source_lost == "block",
            ignore=frozenset({config.service.name}),
        )


@dataclass(frozen=True)
class DeviceCurrent:
    current: float | None
    power: float | None                # V x I of the Victron current; None with the BMS sum
    source: str                        # "victron" or "bms"
    block: bool = False                # source lost and on_source_lost = "block": CCL/DCL 0
    problems: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    parts: dict[str, float] = field(default_factory=dict)


def block_limits(limits: ChargeLimits) -> ChargeLimits:
    """CCL and DCL 0 for `on_source_lost = "block"`; an invalid limit (no pack) stays invalid."""
    why = "bank current source lost (current.on_source_lost = block)"
    return replace(
        limits,
        ccl=None if limits.ccl is None else 0.0, dcl=None if limits.dcl is None else 0.0,
        charge_reason=why, discharge_reason=why,
        charge_source="current source lost", discharge_source="current source lost",
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _label(reading: Reading) -> str:
    name = reading.values.get("/CustomName")
    return f"{reading.service} ({name})" if isinstance(name, str) and name else reading.service


def selector_text(selector: int | str) -> str:
    return f"DeviceInstance {selector}" if isinstance(selector, int) else repr(selector)


def matches(selector: int | str, reading: Reading) -> bool:
    if isinstance(selector, int) and not isinstance(selector, bool):
        instance = _number(reading.values.get("/DeviceInstance"))
        return instance is not None and instance == selector
    return selector in (reading.values.get("/CustomName"), reading.service)


def is_bms(reading: Reading) -> bool:
    return any(path in reading.values for path in BMS_PATHS)


def names_a_shunt(reading: Reading) -> bool:
    product = reading.values.get("/ProductName")
    return isinstance(product, str) and any(n.lower() in product.lower() for n in SHUNT_NAMES)


class VictronDevices:
    """The CurrentSource for `current.source = "victron_devices"` (module header)."""

    name = "victron_devices"

    def __init__(self, params: VictronParams) -> None:
        self.params = params
        self._bms = BmsSum()
        self._started: float | None = None
        self._seen: set[str] = set()
        self._warned = False
        self.missing_shunts: tuple[str, ...] = ()
        self._last = DeviceCurrent(None, None, "bms")

    @classmethod
    def from_config(cls, config: Any) -> VictronDevices:
        return cls(VictronParams.from_config(config))

    def measure(self, ctx: TickContext) -> CurrentResult:
        bms = self._bms.measure(ctx)
        voltages = [p.voltage for p in ctx.online if p.voltage is not None]
        voltage = sum(voltages) / len(voltages) if voltages else None
        found = self.update(ctx.now, ctx.services, bms.current, voltage)
        if found.source == "victron":
            return CurrentResult(found.current, found.power, self.name, events=found.events)
        return CurrentResult(bms.current, bms.power, f"{bms.source} (victron_devices lost)",
                             events=found.events, block=found.block)

    def update(self, now: float, readings: Iterable[Reading], bms_current: float | None,
               voltage: float | None) -> DeviceCurrent:
        if self._started is None:
            self._started = now
        starting = now - self._started < self.params.stale_after
        devices, problems = self._select(list(readings))
        parts: dict[str, float] = {}
        for reading, factor in devices:
            value = self._contribution(reading, problems)
            if value is not None:
                parts[reading.service] = factor * value
        present = {r.service for r, _ in devices}
        problems.extend(f"{name} vanished" for name in sorted(self._seen - present))
        self._seen |= present
        events: list[Event] = []
        if problems:
            result = self._lost_result(starting, problems, events, bms_current, parts)
        else:
            if self._warned:
                events.append(VictronCurrentBack(tuple(sorted(parts))))
            self._warned = False
            total = sum(parts.values())
            v = _number(voltage)
            result = DeviceCurrent(total, v * total if v is not None else None, "victron",
                                   parts=parts, events=tuple(events))
        self._last = result
        return result

    def subscriptions(self) -> dict[str, frozenset[str]]:
        """The Victron devices whose current this source adds up (strategies.Subscribing)."""
        classes = {c: frozenset(p) for c, p in SERVICE_PATHS.items()}
        if not self.params.include_dcdc:
            del classes["dcdc"]
        return classes

    def status(self) -> dict[str, Any]:
        last = self._last
        return {"source": last.source, "blocked": last.block, "problems": list(last.problems),
                "missing_shunts": list(self.missing_shunts), "parts": dict(last.parts)}

    # ----- steps ---------------------------------------------------------------------------

    def _select(self, readings: list[Reading]) -> tuple[list[tuple[Reading, float]], list[str]]:
        p = self.params
        problems: list[str] = []
        battery_shunts: list[Reading] = []
        dcload_shunts: list[Reading] = []
        chargers: list[Reading] = []
        for r in readings:
            if r.service in p.ignore:
                continue
            if r.service.startswith(BATTERY):
                if not is_bms(r) and self._wanted(r):
                    battery_shunts.append(r)
            elif r.service.startswith(DCLOAD):
                if self._wanted(r):
                    dcload_shunts.append(r)
            elif r.service.startswith((VEBUS, SOLARCHARGER)) or (
                    p.include_dcdc and r.service.startswith(DCDC)):
                chargers.append(r)
        self.missing_shunts = tuple(
            selector_text(s) for s in p.shunts
            if not any(matches(s, r) for r in battery_shunts + dcload_shunts))
        problems.extend(f"configured shunt {s} not found" for s in self.missing_shunts)
        if p.shunt_alone:
            if not battery_shunts:
                problems.append("shunt_alone is set but no battery-mode shunt is there")
            return [(r, 1.0) for r in battery_shunts], problems
        devices = [(r, 1.0) for r in chargers + battery_shunts]
        devices += [(r, p.dcload_sign) for r in dcload_shunts]
        if not devices:
            problems.append("no Multi, solar charger or shunt found")
        return devices, problems

    def _wanted(self, reading: Reading) -> bool:
        if any(matches(s, reading) for s in self.params.shunts):
            return True
        if not self.params.all_shunts:
            return False
        return reading.service.startswith(DCLOAD) or names_a_shunt(reading)

    @staticmethod
    def _contribution(reading: Reading, problems: list[str]) -> float | None:
        connected = _number(reading.values.get("/Connected")) == 1
        if reading.service.startswith(VEBUS) and not connected:
            return 0.0
        if not connected and "/Connected" in reading.values:
            raw = reading.values.get("/Connected")
            problems.append(f"{_label(reading)}: /Connected is {raw!r} (device link lost)")
            return None
        current = _number(reading.values.get("/Dc/0/Current"))
        if current is None:
            raw = reading.values.get("/Dc/0/Current")
            problems.append(f"{_label(reading)}: /Dc/0/Current is {raw!r}")
            return None
        return current

    def _lost_result(self, starting: bool, problems: list[str], events: list[Event],
                     bms_current: float | None, parts: dict[str, float]) -> DeviceCurrent:
        block = self.params.block_on_loss
        if not starting and not self._warned:
            events.append(VictronCurrentLost(tuple(problems), block))
            self._warned = True
        return DeviceCurrent(_number(bms_current), None, "bms", block=block and not starting,
                             problems=tuple(problems), events=tuple(events), parts=parts)
