"""Strategy interfaces: how the engine asks for the bank current, the SoC and the charge limits.

Each tick the engine builds one `TickContext` and calls, in this order:
    CurrentSource.measure(ctx)              -> CurrentResult
    SocStrategy.estimate(ctx, current)      -> SocResult
    ChargeStrategy.limits(ctx, current)     -> ChargeLimits
A strategy may keep state between ticks (a counter, a balancing phase) but must stay pure: the
clock is `ctx.now` (and `ctx.wall` for calendar rules), and anything to persist or log leaves
through its result (`events`: objects from core/events.py; `values`).
`values` are extra aggregate paths a strategy publishes itself (merged last by the engine).

Whatever a ChargeStrategy returns, the engine passes its CCL/DCL through
`strategies.charge.apply_envelope`, which caps them at the per-pack-share limit of the online packs,
zeroes them when a pack blocks or `on_pack_lost` demands it, and invalidates them when no pack is
online: no strategy can push a pack beyond its own limits (docs/safety.md §1).

To add a strategy: implement the Protocol and register a factory in `build_strategies`.

Optional hooks (a strategy defines only those it needs; the daemon looks them up by name, so a new
strategy touches its own module and the registry only):
- State that survives a restart (`Stateful`): the strategy names its file and format version and
  trades plain dicts; the daemon's state store does the reading and the atomic writing.
- Extra services to follow (`subscriptions`): service class -> paths, merged with the packs' own.
- Settings it reads (`settings`): localsettings paths the daemon follows and passes in
  `TickContext.settings`, each with what it means for the strategy when the setting is unreadable.
- What it reports for `aggbatt status` (`status`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeGuard, TypeVar

from aggbatt.core.events import Event
from aggbatt.core.snapshot import PackSnapshot, ServiceReading

_S = TypeVar("_S")


@dataclass(frozen=True)
class OfflinePack:
    id: str
    name: str
    reason: str


@dataclass(frozen=True)
class TickContext:
    now: float  # monotonic seconds
    config: Any  # aggbatt.config.Config
    online: Sequence[PackSnapshot]  # packs usable this tick, sorted by id
    offline: Sequence[OfflinePack]  # known packs that are not online (missing, stale, invalid, readmitting)
    services: Sequence[ServiceReading]  # every reading given to the tick (other service classes too)
    # Wall-clock time for calendar rules (epoch seconds or a datetime); None when the caller gave
    # none. Durations always use `now`: a wall-clock step must not stretch or shrink them.
    wall: float | datetime | None = None
    # Per direction ("charge"/"discharge"), per pack id: (last measured share, weight 0..1 of that
    # measurement now), kept by the engine's strategies.charge.ShareMemory; empty = none yet.
    shares: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    # The last fresh data of the known packs that are not online (stale, offline, readmitting),
    # with any block their present data shows: they never count as measurements, but their blocks
    # and limits keep bounding CCL, DCL and CVL (strategies.charge.apply_envelope).
    held: Sequence[PackSnapshot] = ()
    # localsettings path -> value, for the paths the strategies' `settings` hooks name; a path
    # that could not be read is absent.
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CurrentResult:
    current: float | None  # A, + = charging; None when unknown
    power: float | None  # W
    source: str  # short text for status, e.g. "bms_sum"
    events: Sequence[Event] = ()
    values: Mapping[str, Any] = field(default_factory=dict)
    # The configured source is lost and current.on_source_lost = "block": the engine sets CCL and
    # DCL to 0 whatever the charge strategy returned (strategies.victron_current.block_limits).
    block: bool = False


@dataclass(frozen=True)
class SocResult:
    soc: float | None  # %
    capacity: float | None  # remaining Ah
    consumed_ah: float | None  # Ah, <= 0
    time_to_go: int | None  # s
    events: Sequence[Event] = ()
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ChargeLimits:
    cvl: float | None
    ccl: float | None
    dcl: float | None
    charge_reason: str | None  # /Info/ChargeLimitation
    discharge_reason: str | None  # /Info/DischargeLimitation
    # Stable keys of what sets each limit (no numbers in them): a change is logged, a number is not.
    charge_source: str = ""
    discharge_source: str = ""
    events: Sequence[Event] = ()
    values: Mapping[str, Any] = field(default_factory=dict)


class CurrentSource(Protocol):
    def measure(self, ctx: TickContext) -> CurrentResult: ...


class SocStrategy(Protocol):
    def estimate(self, ctx: TickContext, current: CurrentResult) -> SocResult: ...


class ChargeStrategy(Protocol):
    def limits(self, ctx: TickContext, current: CurrentResult) -> ChargeLimits: ...


@dataclass(frozen=True)
class StateFile:
    name: str  # file name in the daemon's state dir
    version: int  # a file of another version is ignored
    what: str  # for the log: "cannot save <what>"
    # A record whose write failed is offered again at the next tick (until a newer one replaces
    # it); False for records that are only true at the moment they are written.
    retry: bool = False


class Stateful(Protocol):
    """A strategy whose state survives a restart or a rebuild at a config reload."""

    state_file: ClassVar[StateFile]

    def restore_state(self, data: Mapping[str, Any] | None, problem: str | None,
                      wall: float) -> None:
        """At start: the file as read (None and why when it is missing or unusable)."""

    def state_to_save(self, wall: float) -> dict[str, Any] | None:
        """After a tick: a record to write now, once; None when nothing changed."""

    def state_at_stop(self, wall: float) -> dict[str, Any] | None:
        """At shutdown: the record to write last; None when there is nothing to write."""

    def state_to_carry(self, wall: float) -> dict[str, Any] | None:
        """At a rebuild: the record a replacement of the same kind restores; None when this one
        holds nothing yet (the replacement then restores from the file, as a restart would)."""


def is_stateful(strategy: object) -> TypeGuard[Stateful]:
    return isinstance(getattr(strategy, "state_file", None), StateFile)


class Subscribing(Protocol):
    def subscriptions(self) -> Mapping[str, frozenset[str]]: ...


class ReadsSettings(Protocol):
    # localsettings path -> what a missing value means for the strategy (logged once)
    settings: Mapping[str, str]


class Reporting(Protocol):
    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Strategies:
    current: CurrentSource
    soc: SocStrategy
    charge: ChargeStrategy

    def all(self) -> tuple[Any, ...]:
        return (self.current, self.soc, self.charge)


def build_strategies(config: Any) -> Strategies:
    """The strategies the config selects; ValueError names a choice this build does not have."""
    # Imported here: the strategy modules import the types above from this package.
    from aggbatt.core.strategies.charge import PassthroughCharge
    from aggbatt.core.strategies.coulomb import CoulombSoc
    from aggbatt.core.strategies.current import BmsSum
    from aggbatt.core.strategies.own_charge import OwnCharge
    from aggbatt.core.strategies.soc import BmsAverage
    from aggbatt.core.strategies.victron_current import VictronDevices

    current_sources: Mapping[str, Callable[[Any], CurrentSource]] = {
        "bms_sum": BmsSum, "victron_devices": VictronDevices.from_config}
    soc_strategies: Mapping[str, Callable[[Any], SocStrategy]] = {
        "bms_average": BmsAverage, "coulomb_counter": CoulombSoc.from_config}
    charge_strategies: Mapping[str, Callable[[Any], ChargeStrategy]] = {
        "passthrough": PassthroughCharge, "own": OwnCharge}
    return Strategies(
        _factory("current.source", config.current.source, current_sources)(config),
        _factory("soc.strategy", config.soc.strategy, soc_strategies)(config),
        _factory("charge.strategy", config.charge.strategy, charge_strategies)(config),
    )


def _factory(key: str, name: str, table: Mapping[str, Callable[[Any], _S]]) -> Callable[[Any], _S]:
    factory = table.get(name)
    if factory is None:
        raise ValueError(f"{key} = {name!r} is not available in this version "
                         f"(available: {', '.join(sorted(table))})")
    return factory
