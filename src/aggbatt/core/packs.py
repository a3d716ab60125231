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

One service maps to one pack for as long as it stays on the bus (one appearance: same name, same
connection). Its base id is bound when it appears; a later change of /Serial or /CustomName (a
user renaming a pack that has no serial, a driver that reads the serial late) is followed once the
new base id has held for `rename_after` seconds: the pack keeps its place and its history under the
new id, and the old id leaves the known packs instead of staying behind as a ghost that counts
offline forever. Until then, and while the id keeps changing (a BMS that reports a different
serial on every read), the bound id stays, so the known packs neither grow nor get rewritten on
every change; one event says so. The new id is never taken from another pack: not from one on the
bus, and not from a known pack that is missing unless it is the pack's own /Serial (a pack that
finds its persisted serial again). A rename while aggbatt is not running cannot be followed: the
old id then stays known until `aggbatt forget-packs`. At most MAX_KNOWN_PACKS ids are known:
past that the engine forgets the packs missing longest (a driver that comes back under a new
serial each time must not grow the list without end).

Two services with the same base id (cheap BMSes often share a default serial): both are kept and
each is identified as "<base>@<service name>"; an event says so. The decision is sticky for the
life of the directory (and recovered from persisted ids of that form), so the ids do not flip back
and forth when one of the two is briefly gone. The plain base id is then dropped from the known
packs, since it can no longer be told which pack it meant.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from aggbatt.core.events import Event, PackIdChanged, PackIdFlapping, PackIdShared, PackIdTaken
from aggbatt.core.pack_paths import CCL, CUSTOM_NAME, CVL, DCL, PRODUCT_NAME, SERIAL
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.validation import PACK_TEXT_MAX

BATTERY_PREFIX = "com.victronenergy.battery."
SHUNT_NAMES = ("SmartShunt", "BMV", "Lynx Shunt")
BMS_PATHS = (CVL, CCL, DCL)
DUPLICATE_MARK = "@" + BATTERY_PREFIX
# A new id must hold at least this long before it replaces the bound one, even with
# `readmit_after` 0: a serial that changes on every read must never be followed tick by tick.
MIN_RENAME_AFTER = 1.0
# Far more packs than any bank has; the bound only matters for a driver that invents new ids.
MAX_KNOWN_PACKS = 64


@dataclass(frozen=True)
class PackRules:
    own_service: str
    product_name_contains: tuple[str, ...] = ("SerialBattery",)
    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()
    rename_after: float = MIN_RENAME_AFTER

    @classmethod
    def from_config(cls, config: object) -> PackRules:
        discovery = config.discovery  # type: ignore[attr-defined]
        return cls(
            own_service=config.service.name,  # type: ignore[attr-defined]
            product_name_contains=tuple(discovery.product_name_contains),
            include=frozenset(discovery.include),
            exclude=frozenset(discovery.exclude),
            rename_after=max(MIN_RENAME_AFTER,
                             float(config.freshness.readmit_after)),  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class PackService:
    id: str
    name: str  # for humans: /CustomName, else the id
    reading: ServiceReading
    renamed_from: str | None = None  # the id this same service had until this tick


@dataclass
class _Binding:
    """The base id one appearance of a service is known by, and a change not yet followed."""

    appeared_at: object
    base: str
    id: str = ""
    pending: str | None = None
    pending_since: float = 0.0
    told: set[str] = field(default_factory=set)  # kinds of event already logged


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


def _owned(base: str, known: Collection[str]) -> bool:
    """Whether a known id (plain, or base@service of a shared id) stands for `base`."""
    return base in known or any(k.startswith(base + DUPLICATE_MARK) for k in known)


class PackDirectory:
    """Classifies the battery services of each tick into packs with stable ids."""

    def __init__(self, rules: PackRules, known: Iterable[str] = ()) -> None:
        self.rules = rules
        self._ambiguous: set[str] = {k.split(DUPLICATE_MARK, 1)[0] for k in known if DUPLICATE_MARK in k}
        self._bound: dict[str, _Binding] = {}  # service name -> its present appearance

    @property
    def ambiguous(self) -> frozenset[str]:
        """Base ids shared by more than one service (identified as base@service)."""
        return frozenset(self._ambiguous)

    def identify(self, readings: Sequence[ServiceReading], now: float | None = None,
                 known: Collection[str] = ()) -> tuple[list[PackService], list[Event]]:
        """(packs sorted by id, events). `now` None only classifies (the fail-safe path):
        bindings stay as they are. `known`: the known pack ids, which a rename may not take."""
        events: list[Event] = []
        chosen = [r for r in readings if why_not_a_pack(r, self.rules) is None]
        bases: dict[str, str] = {}
        for reading in chosen:
            binding = self._bound.get(reading.service)
            if binding is not None and binding.appeared_at != reading.appeared_at:
                binding = None
            if binding is None:
                bases[reading.service] = base_id(reading)
                if now is not None:
                    self._bound[reading.service] = _Binding(reading.appeared_at, base_id(reading))
            else:
                bases[reading.service] = binding.base
        if now is not None:
            for reading in chosen:
                self._follow(reading, now, bases, known, events)
            present = set(bases)
            for service in [s for s in self._bound if s not in present]:
                del self._bound[service]
        by_base: dict[str, list[ServiceReading]] = {}
        for reading in chosen:
            by_base.setdefault(bases[reading.service], []).append(reading)
        packs: list[PackService] = []
        for base, group in by_base.items():
            group.sort(key=lambda r: r.service)
            if len(group) > 1 and base not in self._ambiguous:
                self._ambiguous.add(base)
                events.append(PackIdShared(base, tuple(r.service for r in group),
                                           tuple(duplicate_id(base, r.service) for r in group)))
            for reading in group:
                pack_id = duplicate_id(base, reading.service) if base in self._ambiguous else base
                renamed_from = None
                binding = self._bound.get(reading.service) if now is not None else None
                if binding is not None:
                    if binding.id and binding.id != pack_id:
                        renamed_from = binding.id
                    binding.id = pack_id
                packs.append(PackService(pack_id, _text(reading, CUSTOM_NAME) or pack_id, reading,
                                         renamed_from))
        packs.sort(key=lambda p: p.id)
        return packs, events

    def _follow(self, reading: ServiceReading, now: float, bases: dict[str, str],
                known: Collection[str], events: list[Event]) -> None:
        """Move the binding of `reading` to its new base id once that held (module header)."""
        binding = self._bound[reading.service]
        reported = base_id(reading)
        if reported != binding.pending and binding.pending is not None:
            self._tell(binding, "flapping", events,
                       PackIdFlapping(binding.id, reading.service, binding.pending, reported,
                                      self.rules.rename_after))
        if reported == binding.base:
            binding.pending = None
            return
        if reported != binding.pending:
            binding.pending = reported
            binding.pending_since = now
        if now - binding.pending_since < self.rules.rename_after:
            return
        others = {b for s, b in bases.items() if s != reading.service}
        taken = reported in others or (
            _owned(reported, known) and reported != _text(reading, SERIAL))
        if taken:
            self._tell(binding, "taken", events,
                       PackIdTaken(binding.id, reading.service, reported))
            return
        events.append(PackIdChanged(binding.id, reading.service, reported))
        binding.base = reported
        binding.pending = None
        bases[reading.service] = reported

    @staticmethod
    def _tell(binding: _Binding, kind: str, events: list[Event], event: Event) -> None:
        """Once per appearance and kind: a BMS that flaps keeps doing it every tick."""
        if kind not in binding.told:
            binding.told.add(kind)
            events.append(event)

    def is_excluded_id(self, pack_id: str) -> bool:
        """A persisted id that the present rules no longer allow (excluded, or now ambiguous)."""
        return pack_id in self.rules.exclude or pack_id in self._ambiguous
