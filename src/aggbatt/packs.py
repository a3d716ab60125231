"""Which battery services are packs, and each pack's stable identity. Pure.

Rules, checked in this order (the first that applies decides):
1. Only `com.victronenergy.battery.*` services; never our own service name.
2. Never a battery monitor: a /ProductName naming a SmartShunt, BMV or Lynx Shunt, or a service
   with none of the BMS limit paths (/Info/MaxChargeVoltage, MaxChargeCurrent, MaxDischargeCurrent)
   present. A path present with an invalid value still counts as present: a pack that lost its
   BMS link stays a pack (and goes offline) instead of silently dropping out of the count.
3. `exclude` (service name, /Serial or /CustomName) wins over everything below.
4. If `include` is not empty, only services it names (same keys) are packs;
   otherwise a service is a pack when its /ProductName contains one of `product_name_contains`
   (case-sensitive, as dbus-serialbattery's "SerialBattery <uid> ..." names are fixed).

Identity: /Serial when it is non-empty text, else /CustomName, else the service name. The id is
what the known-pack list persists, so a pack whose driver restarts under a new service name (or a
new unique name) keeps its identity and its history.

Two services with the same base id (cheap BMSes often share a default serial): both are kept and
each is identified as "<base>@<service name>"; an event says so. The decision is sticky for the
life of the directory (and recovered from persisted ids of that form), so the ids do not flip back
and forth when one of the two is briefly gone. The plain base id is then dropped from the known
packs, since it can no longer be told which pack it meant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aggbatt.model import (CCL, CUSTOM_NAME, CVL, DCL, PACK_TEXT_MAX, PRODUCT_NAME, SERIAL,
                           ServiceReading)

BATTERY_PREFIX = "com.victronenergy.battery."
SHUNT_NAMES = ("SmartShunt", "BMV", "Lynx Shunt")
BMS_PATHS = (CVL, CCL, DCL)
DUPLICATE_MARK = "@" + BATTERY_PREFIX


@dataclass(frozen=True)
class PackRules:
    own_service: str
    product_name_contains: tuple[str, ...] = ("SerialBattery",)
    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: object) -> PackRules:
        discovery = config.discovery  # type: ignore[attr-defined]
        return cls(
            own_service=config.service.name,  # type: ignore[attr-defined]
            product_name_contains=tuple(discovery.product_name_contains),
            include=frozenset(discovery.include),
            exclude=frozenset(discovery.exclude),
        )


@dataclass(frozen=True)
class PackService:
    id: str
    name: str  # for humans: /CustomName, else the id
    reading: ServiceReading


def _text(reading: ServiceReading, path: str) -> str | None:
    try:
        value = reading.values.get(path)
    except Exception:  # noqa: BLE001 - a broken mapping is just missing data
        return None
    if isinstance(value, str) and value.strip():
        return value.strip()[:PACK_TEXT_MAX]
    return None


def _keys(reading: ServiceReading) -> set[str]:
    """What include/exclude lists may name: service name, /Serial, /CustomName."""
    keys = {reading.service}
    for path in (SERIAL, CUSTOM_NAME):
        text = _text(reading, path)
        if text is not None:
            keys.add(text)
    return keys


def why_not_a_pack(reading: ServiceReading, rules: PackRules) -> str | None:
    """None when the service is a pack, else the reason (for `aggbatt status` and debugging)."""
    service = reading.service
    if not isinstance(service, str) or not service.startswith(BATTERY_PREFIX):
        return "not a battery service"
    if service == rules.own_service:
        return "our own service"
    product = _text(reading, PRODUCT_NAME) or ""
    if any(name.lower() in product.lower() for name in SHUNT_NAMES):
        return "a battery monitor (shunt), not a BMS"
    try:
        has_bms_paths = any(path in reading.values for path in BMS_PATHS)
    except Exception:  # noqa: BLE001
        has_bms_paths = False
    if not has_bms_paths:
        return "publishes no charge limits (not a BMS)"
    keys = _keys(reading)
    if keys & rules.exclude:
        return "excluded"
    if rules.include:
        return None if keys & rules.include else "not in include"
    if any(part and part in product for part in rules.product_name_contains):
        return None
    return "product name does not match"


def base_id(reading: ServiceReading) -> str:
    return _text(reading, SERIAL) or _text(reading, CUSTOM_NAME) or reading.service


def duplicate_id(base: str, service: str) -> str:
    return f"{base}@{service}"


class PackDirectory:
    """Classifies the battery services of each tick into packs with stable ids."""

    def __init__(self, rules: PackRules, known: Iterable[str] = ()) -> None:
        self.rules = rules
        self._ambiguous: set[str] = {k.split(DUPLICATE_MARK, 1)[0] for k in known if DUPLICATE_MARK in k}

    @property
    def ambiguous(self) -> frozenset[str]:
        """Base ids shared by more than one service (identified as base@service)."""
        return frozenset(self._ambiguous)

    def identify(self, readings: Sequence[ServiceReading]) -> tuple[list[PackService], list[str]]:
        """(packs sorted by id, event lines for newly found duplicate ids)."""
        events: list[str] = []
        by_base: dict[str, list[ServiceReading]] = {}
        for reading in readings:
            if why_not_a_pack(reading, self.rules) is None:
                by_base.setdefault(base_id(reading), []).append(reading)
        packs: list[PackService] = []
        for base, group in by_base.items():
            group.sort(key=lambda r: r.service)
            if len(group) > 1 and base not in self._ambiguous:
                self._ambiguous.add(base)
                events.append(
                    f"{len(group)} packs report the same id {base!r} "
                    f"({', '.join(r.service for r in group)}): identifying them as "
                    f"{', '.join(duplicate_id(base, r.service) for r in group)}")
            for reading in group:
                pack_id = duplicate_id(base, reading.service) if base in self._ambiguous else base
                packs.append(PackService(pack_id, _text(reading, CUSTOM_NAME) or pack_id, reading))
        packs.sort(key=lambda p: p.id)
        return packs, events

    def is_excluded_id(self, pack_id: str) -> bool:
        """A persisted id that the present rules no longer allow (excluded, or now ambiguous)."""
        return pack_id in self.rules.exclude or pack_id in self._ambiguous
