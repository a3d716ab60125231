"""Builders for what the engine and its strategies take in: pack snapshots, service readings as
the bus monitor keeps them, and configs. Every builder takes keyword arguments and sets nothing
that is not written here, so a test reads its inputs from its own call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aggbatt.config import Config, config_from_dict
from aggbatt.core.snapshot import PackSnapshot, ServiceReading
from aggbatt.core.strategies import OfflinePack, TickContext

SB = "com.victronenergy.battery."

# Short names for the pack paths tests set most often.
SHORT = {
    "voltage": "/Dc/0/Voltage", "current": "/Dc/0/Current", "capacity": "/InstalledCapacity",
    "soc": "/Soc", "cvl": "/Info/MaxChargeVoltage", "ccl": "/Info/MaxChargeCurrent",
    "dcl": "/Info/MaxDischargeCurrent", "serial": "/Serial", "name": "/CustomName",
    "online": "/System/NrOfModulesOnline", "temperature": "/Dc/0/Temperature",
    "allow_charge": "/Io/AllowToCharge",
}

# Marks a path a reading must not carry at all (not even as invalid).
ABSENT: Any = object()


# ---- configs ------------------------------------------------------------------------------------


def config(**sections: Mapping[str, Any]) -> Config:
    """The validated config of these sections; everything else at its default."""
    return config_from_dict({name: dict(values) for name, values in sections.items()})


# Staleness in fractions of a second: bus tests see a pack go stale or return without waiting.
FAST = {"freshness": {"stale_after": 0.5, "stale_after_idle": 0.5, "readmit_after": 0.3}}


def fast_config(**sections: Mapping[str, Any]) -> Config:
    """`config` with the FAST freshness times underneath the given sections."""
    data: dict[str, Any] = {k: dict(v) for k, v in FAST.items()}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


# ---- pack snapshots -----------------------------------------------------------------------------


def snapshot(pid: str, *, name: str | None = None, service: str | None = None,
             **fields: Any) -> PackSnapshot:
    """Pack `pid`, named `pid` and served as com.victronenergy.battery.<pid> unless given;
    every other field None unless given."""
    return PackSnapshot(id=pid, name=pid if name is None else name,
                        service=SB + pid if service is None else service, **fields)


def cell_list(count: int, cell: float, high: float | None = None,
              low: float | None = None) -> list[float]:
    """`count` cells at `cell` volts, the first at `high` and the last at `low` when given."""
    volts = [cell] * count
    if high is not None:
        volts[0] = high
    if low is not None:
        volts[-1] = low
    return volts


def cell_snapshot(pid: str, cells: Sequence[float], *, per_cell: bool = True, digits: int = 6,
                  **fields: Any) -> PackSnapshot:
    """A pack whose cell count, voltage, cell sum and extremes agree with `cells` (sums rounded
    to `digits` decimals as a BMS would); per_cell=False: the single cell voltages unknown.
    `fields` set or override anything, also the derived values."""
    total = round(sum(cells), digits)
    derived: dict[str, Any] = {
        "cells": len(cells), "voltage": total, "voltages_sum": total,
        "max_cell_voltage": max(cells), "min_cell_voltage": min(cells),
        "cell_voltages": {i + 1: v for i, v in enumerate(cells)} if per_cell else {},
    }
    return snapshot(pid, **{**derived, **fields})


def tick_context(online: Sequence[PackSnapshot] = (), *, now: float = 0.0, config: Any = None,
                 offline: Sequence[OfflinePack] = (), services: Sequence[ServiceReading] = (),
                 **rest: Any) -> TickContext:
    """What a strategy sees in one tick; `rest`: wall, shares, held as TickContext takes them."""
    return TickContext(now=now, config=config, online=tuple(online), offline=tuple(offline),
                       services=tuple(services), **rest)


# ---- readings -----------------------------------------------------------------------------------


def paths(short: Mapping[str, Any]) -> dict[str, Any]:
    """D-Bus paths from keyword names: a SHORT name, a path ("/Soc") as is, or the path with "__"
    for "/" ("Dc__0__Current")."""
    out: dict[str, Any] = {}
    for key, value in short.items():
        out[SHORT.get(key) or (key if key.startswith("/") else "/" + key.replace("__", "/"))] = value
    return out


def reading(service: str, values: Mapping[str, Any] | None = None, *, last_change: float = 0.0,
            appeared_at: float = 0.0, changed_at: Mapping[str, float] | None = None,
            unresponsive: bool = False, **short: Any) -> ServiceReading:
    """One service as the monitor sees it: `values` with `short` (see `paths`) on top; a path set
    to ABSENT is left out."""
    raw = {**(values or {}), **paths(short)}
    raw = {path: value for path, value in raw.items() if value is not ABSENT}
    return ServiceReading(service, raw, last_change, appeared_at, dict(changed_at or {}),
                          unresponsive)


def pack_values(serial: str, **short: Any) -> dict[str, Any]:
    """What a healthy serialbattery pack at rest publishes: 53.2 V, 100 Ah at 50 %, CVL 55.2 V,
    CCL and DCL 100 A, charge and discharge allowed, 20 °C."""
    values: dict[str, Any] = {
        "/ProductName": f"SerialBattery(Jkbms) {serial}",
        "/Serial": serial,
        "/CustomName": f"Pack {serial}",
        "/Dc/0/Voltage": 53.2,
        "/Dc/0/Current": 0.0,
        "/InstalledCapacity": 100.0,
        "/Soc": 50.0,
        "/Info/MaxChargeVoltage": 55.2,
        "/Info/MaxChargeCurrent": 100.0,
        "/Info/MaxDischargeCurrent": 100.0,
        "/Io/AllowToCharge": 1,
        "/Io/AllowToDischarge": 1,
        "/System/NrOfModulesOnline": 1,
        "/Dc/0/Temperature": 20.0,
    }
    values.update(paths(short))
    return values


class Bank:
    """Readings as bus/monitor.py keeps them: last_change moves only when a value changes."""

    def __init__(self) -> None:
        self.services: dict[str, list[Any]] = {}

    def add(self, service: str, now: float, serial: str, **short: Any) -> None:
        self.services[SB + service] = [pack_values(serial, **short), now, now]

    def update(self, service: str, now: float, **short: Any) -> None:
        entry = self.services[SB + service]
        for path, value in paths(short).items():
            if entry[0].get(path) != value or path not in entry[0]:
                entry[0][path] = value
                entry[1] = now

    def remove(self, service: str) -> None:
        del self.services[SB + service]

    def readings(self) -> list[ServiceReading]:
        return [ServiceReading(name, dict(v), lc, ap) for name, (v, lc, ap) in self.services.items()]
