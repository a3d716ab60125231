"""What a tick reports: one small immutable object per decision that changed.

The engine and the strategies return these in `TickResult.events` (and the strategies' results);
the daemon logs each one as `log.log(event.level, "%s", event)`. `str(event)` is the log line, so
its wording lives here, next to the fields it is made of; tests about a decision compare the
objects and their fields, not the text.

Decisions that matter to the limits or to the packs' state have their own class. A strategy's
remark that nothing reacts to (a saved state it could not use, a counter that waits) is a
`StrategyNote` with its text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = [
    "DischargeCutOff", "DischargeCutOffKept", "DischargeCutOffReleased", "DynamicCvlChanged",
    "Event", "KnownPacksForgotten", "LimitSourceChanged", "PackBackOnline", "PackHolds",
    "PackIdChanged", "PackIdFlapping", "PackIdShared", "PackIdTaken", "PackNoLongerKnown",
    "PackOnline", "PackWentOffline", "StrategyNote", "TickFailed", "TicksRecovered",
    "ValueIgnored", "VictronCurrentBack", "VictronCurrentLost",
]


@dataclass(frozen=True, slots=True)
class Event:
    @property
    def level(self) -> int:
        return logging.INFO

    def message(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.message()


def _where(service: str | None) -> str:
    return f" ({service})" if service is not None else ""


# ---- packs ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PackOnline(Event):
    """A known pack is online for the first time since the engine started."""
    pack: str
    service: str | None = None

    def message(self) -> str:
        return f"{self.pack}: online{_where(self.service)}"


@dataclass(frozen=True, slots=True)
class PackBackOnline(Event):
    """A pack that was offline is re-admitted after `after` s of healthy data."""
    pack: str
    after: float
    service: str | None = None

    def message(self) -> str:
        return (f"{self.pack}: back online after {self.after:g} s of valid data"
                f"{_where(self.service)}")


@dataclass(frozen=True, slots=True)
class PackWentOffline(Event):
    pack: str
    reason: str | None

    def message(self) -> str:
        return f"{self.pack}: offline: {self.reason}"


@dataclass(frozen=True, slots=True)
class PackHolds(Event):
    """What the last fresh data of a pack that is not online still imposes changed."""
    pack: str
    what: str

    def message(self) -> str:
        return (f"{self.pack}: not online; its last fresh data still counts ({self.what}) until "
                "it reports fresh data or is forgotten")


@dataclass(frozen=True, slots=True)
class PackNoLongerKnown(Event):
    """A known pack the rules no longer allow (excluded, or its id turned out shared)."""
    pack: str

    def message(self) -> str:
        return (f"{self.pack}: no longer a known pack "
                "(excluded or its id is shared by several packs)")


@dataclass(frozen=True, slots=True)
class KnownPacksForgotten(Event):
    """Past `limit` known packs, the ones missing longest were forgotten."""
    limit: int
    ids: tuple[str, ...]

    def message(self) -> str:
        more = ", ..." if len(self.ids) > 5 else ""
        return (f"more than {self.limit} known packs: forgot {len(self.ids)} missing the longest "
                f"({', '.join(self.ids[:5])}{more})")


@dataclass(frozen=True, slots=True)
class ValueIgnored(Event):
    """A pack sent garbage on a path (reported once per pack and path)."""
    pack: str
    path: str
    problem: str

    def message(self) -> str:
        return f"{self.pack}: ignoring {self.path}: {self.problem}"


@dataclass(frozen=True, slots=True)
class PackIdShared(Event):
    """Several services report the same id: each is identified as id@service from now on."""
    id: str
    services: tuple[str, ...]
    ids: tuple[str, ...]

    def message(self) -> str:
        return (f"{len(self.services)} packs report the same id {self.id!r} "
                f"({', '.join(self.services)}): identifying them as {', '.join(self.ids)}")


@dataclass(frozen=True, slots=True)
class PackIdFlapping(Event):
    pack: str
    service: str
    previous: str
    reported: str
    hold: float  # s an id must hold before the pack is known by it

    def message(self) -> str:
        return (f"{self.pack}: {self.service} reports another id ({self.previous!r} -> "
                f"{self.reported!r}) before the last one held for {self.hold:g} s; it stays "
                f"{self.pack!r} until one id holds")


@dataclass(frozen=True, slots=True)
class PackIdTaken(Event):
    """A service reports the id of another known pack: it keeps its own."""
    pack: str
    service: str
    reported: str

    def message(self) -> str:
        return (f"{self.pack}: {self.service} now reports {self.reported!r}, the id of another "
                f"known pack; it stays {self.pack!r}")


@dataclass(frozen=True, slots=True)
class PackIdChanged(Event):
    pack: str
    service: str
    reported: str

    def message(self) -> str:
        return (f"{self.pack}: {self.service} now reports the id {self.reported!r}; the pack is "
                "known by it from now on")


# ---- limits ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LimitSourceChanged(Event):
    """The kind of rule that sets a limit changed; `limit` is "charge", "discharge" or "CVL"."""
    limit: str
    reason: str | None

    def message(self) -> str:
        what = "CVL" if self.limit == "CVL" else f"{self.limit} limit"
        return f"{what} now set by: {self.reason}"


@dataclass(frozen=True, slots=True)
class DynamicCvlChanged(Event):
    active: bool
    reason: str | None = None

    def message(self) -> str:
        return f"dynamic CVL: {self.reason}" if self.active else "dynamic CVL: back at the target"


@dataclass(frozen=True, slots=True)
class DischargeCutOff(Event):
    reason: str | None

    def message(self) -> str:
        return f"DCL cut off: {self.reason}"


@dataclass(frozen=True, slots=True)
class DischargeCutOffReleased(Event):
    def message(self) -> str:
        return "DCL cut-off released: lowest cell above the hysteresis"


@dataclass(frozen=True, slots=True)
class DischargeCutOffKept(Event):
    """The cut-off stays because the lowest cell of these packs is unknown."""
    missing: str

    def message(self) -> str:
        return f"DCL cut-off kept while the lowest cell is unknown: {self.missing}"


@dataclass(frozen=True, slots=True)
class VictronCurrentLost(Event):
    problems: tuple[str, ...]
    blocked: bool  # charge and discharge blocked, else the BMS currents are used

    def message(self) -> str:
        action = ("charge and discharge blocked (on_source_lost = block)" if self.blocked
                  else "using the sum of the BMS currents")
        return f"bank current from Victron devices lost: {'; '.join(self.problems)}; {action}"


@dataclass(frozen=True, slots=True)
class VictronCurrentBack(Event):
    devices: tuple[str, ...]

    def message(self) -> str:
        return f"bank current from Victron devices again ({', '.join(self.devices)})"


# ---- the tick -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TickFailed(Event):
    """A tick raised: safe limits are published until one succeeds."""
    error: str  # the exception's class name
    dcl: float

    def message(self) -> str:
        return (f"tick failed ({self.error}): publishing safe limits (CCL 0, DCL {self.dcl:g} A) "
                "until a tick succeeds")


@dataclass(frozen=True, slots=True)
class TicksRecovered(Event):
    def message(self) -> str:
        return "ticks work again: limits computed normally"


@dataclass(frozen=True, slots=True)
class StrategyNote(Event):
    """A strategy's remark without a class of its own."""
    text: str
    level: int = logging.INFO

    def message(self) -> str:
        return self.text
