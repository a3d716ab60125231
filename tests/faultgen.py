"""Random fault sequences for a simulated bank, driving the pure engine (no bus).

A property test draws a bank (`banks()`: 1-6 unequal packs: capacity, internal resistance, cell
count, own limits) and a sequence of steps (`fault_steps()`), then iterates `run(...)`: after every
step the clock moves on, every pack publishes what changed (or nothing, when it is quiet, frozen,
gone or its link is lost), the engine ticks, and one `Tick` comes back with the engine's result and
what the simulator knows (what each pack last published as fresh data, whether it is present...).

The packs behave like dbus-serialbattery under velib: a value's change stamp moves only when the
value changes; under current every pack's current and voltage jitter, at rest nothing changes; a
lost BMS link publishes NrOfModulesOnline 0 with voltage and current invalid and the old limits
kept; a pack that blocks a direction opens its FET and carries no current in that direction (so it
publishes nothing), and the other packs share the bank current by their conductance.

A step is (kind, pack index, argument, seconds to the next tick); see `KINDS`. A tick may be made to
fail ("fail" step): the driver then publishes `Engine.fail_safe` like the daemon does.

`fault_settings()`: Hypothesis settings for properties over these sequences, bounded to a few
seconds; with the environment variable AGGBATT_LONG_TESTS=1 (`scripts/test --long`) they run
`LONG_EXAMPLES` examples instead.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from aggbatt.core.engine import Engine, TickResult
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.strategies import ChargeLimits, CurrentResult, Strategies, TickContext, build_strategies
from tests.factories import SB

VEBUS = "com.victronenergy.vebus.ttyS4"

LONG_EXAMPLES = 3000


def fault_settings(examples: int = 60) -> settings:
    long = os.environ.get("AGGBATT_LONG_TESTS") == "1"
    return settings(max_examples=LONG_EXAMPLES if long else examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# Values a broken driver or link may put on a path.
GARBAGE: tuple[Any, ...] = (None, math.nan, math.inf, "x", -1.0, 1e9, 5e-324, True, [1])
INVALIDATED = ("/Dc/0/Voltage", "/Dc/0/Current", "/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent",
               "/Info/MaxDischargeCurrent", "/InstalledCapacity", "/Io/AllowToCharge",
               "/Io/AllowToDischarge", "/System/NrOfCellsPerBattery", "/Soc")
# How a pack may block a direction: (path, value) per direction.
BLOCK_WAYS = {
    "charge": (("/Info/MaxChargeCurrent", 0.0), ("/Io/AllowToCharge", 0),
               ("/System/NrOfModulesBlockingCharge", 1)),
    "discharge": (("/Info/MaxDischargeCurrent", 0.0), ("/Io/AllowToDischarge", 0),
                  ("/System/NrOfModulesBlockingDischarge", 1)),
}
DIRECTIONS = ("charge", "discharge")

KINDS = (
    "none",        # nothing happens but time
    "current",     # the bank current changes to argument A (sign: + charges), a reversal included
    "rest",        # the bank current goes to 0: every pack goes quiet
    "freeze",      # the pack's driver hangs: it publishes nothing more while current flows
    "thaw",        # it publishes again
    "vanish",      # its service leaves the bus
    "return",      # its service comes back (a new appearance)
    "invalid",     # path argument gets a garbage value (GARBAGE[index % len])
    "repair",      # every garbage value of the pack is valid again
    "block",       # it blocks direction argument = (direction, way)
    "unblock",     # it lifts its block in direction argument
    "link_loss",   # it reports its BMS link lost (NrOfModulesOnline 0, V and I invalid)
    "link_back",   # the link is back
    "limits",      # it publishes other own limits: argument = (CCL factor, DCL factor, CVL step)
    "restart",     # the daemon restarts from its saved state (known pack ids, blocks)
    "forget",      # the user forgets the packs that are not on the bus
    "source_loss",  # the Victron current source (a Multi) leaves the bus
    "source_back",  # it is back
    "fail",        # the next tick raises inside the charge strategy
)


@dataclass(frozen=True)
class PackSpec:
    capacity: float  # Ah
    resistance: float  # mOhm, sets the pack's share of the bank current
    cells: int
    ccl: float  # A, its own limits when not blocking
    dcl: float


@dataclass(frozen=True)
class Step:
    kind: str
    pack: int
    arg: Any
    dt: float


@st.composite
def banks(draw: st.DrawFn, min_packs: int = 1, max_packs: int = 6) -> list[PackSpec]:
    n = draw(st.integers(min_packs, max_packs))
    return [PackSpec(
        capacity=draw(st.sampled_from([50.0, 100.0, 105.0, 200.0, 280.0, 314.0])),
        resistance=draw(st.sampled_from([0.5, 1.0, 2.0, 4.0, 10.0])),
        cells=draw(st.sampled_from([15, 16, 16])),
        ccl=draw(st.sampled_from([20.0, 50.0, 100.0, 150.0, 200.0])),
        dcl=draw(st.sampled_from([25.0, 50.0, 100.0, 200.0, 300.0])),
    ) for _ in range(n)]


_DT = st.sampled_from([1.0, 1.0, 1.0, 2.0, 6.0, 11.0, 61.0, 125.0, 400.0])


@st.composite
def steps(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> Step:
    kind = draw(st.sampled_from(kinds))
    pack = draw(st.integers(0, 5))
    arg: Any = None
    if kind == "current":
        arg = draw(st.sampled_from([-300.0, -120.0, -40.0, -5.0, -1.0, 1.0, 3.0, 30.0, 100.0, 250.0]))
    elif kind == "invalid":
        arg = (draw(st.sampled_from(INVALIDATED)), draw(st.sampled_from(GARBAGE)))
    elif kind in ("block", "unblock"):
        arg = (draw(st.sampled_from(DIRECTIONS)), draw(st.integers(0, 2)))
    elif kind == "limits":
        arg = (draw(st.sampled_from([0.25, 0.5, 1.0, 1.5])), draw(st.sampled_from([0.25, 0.5, 1.0, 2.0])),
               draw(st.sampled_from([-0.8, -0.4, 0.0, 0.4])))
    return Step(kind, pack, arg, draw(_DT))


def fault_steps(min_size: int = 4, max_size: int = 40,
                kinds: tuple[str, ...] = KINDS) -> st.SearchStrategy[list[Step]]:
    """Random fault sequences; a sequence starts with current flowing so shares can be measured."""
    first = st.builds(Step, st.just("current"), st.just(0),
                      st.sampled_from([-100.0, -20.0, 20.0, 100.0]), st.just(1.0))
    return st.tuples(first, st.lists(steps(kinds), min_size=min_size - 1 if min_size else 0,
                                     max_size=max_size)).map(lambda t: [t[0], *t[1]])


# ---- the simulated bank -------------------------------------------------------------------------


@dataclass
class SimPack:
    index: int
    spec: PackSpec
    present: bool = True
    frozen: bool = False
    link_lost: bool = False
    blocks: dict[str, tuple[str, Any] | None] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS))
    garbage: dict[str, Any] = field(default_factory=dict)
    ccl: float = 0.0
    dcl: float = 0.0
    cvl_per_cell: float = 3.45
    appeared_at: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)
    last_change: float = 0.0
    # What the pack last published while present, not frozen and with its link up: the data the
    # invariants call its "last fresh data". None: never, or forgotten.
    fresh: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return f"P{self.index}"

    @property
    def service(self) -> str:
        return f"{SB}ttyUSB{self.index}"

    @property
    def publishing(self) -> bool:
        """What it publishes now is fresh data (it is there, not hung, its BMS link is up)."""
        return self.present and not self.frozen and not self.link_lost

    def conducts(self, sign: float) -> bool:
        """Its FET lets current through in the direction `sign` (+ charge)."""
        return self.blocks["charge" if sign > 0 else "discharge"] is None


class FlakyCharge:
    """The configured charge strategy, made to raise on demand (a tick failing inside the engine)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail = False

    def limits(self, ctx: TickContext, current: CurrentResult) -> ChargeLimits:
        if self.fail:
            raise RuntimeError("injected tick failure")
        result: ChargeLimits = self.inner.limits(ctx, current)
        return result


@dataclass(frozen=True)
class Tick:
    step: Step
    now: float
    result: TickResult
    failed: bool  # the tick raised; `result` is the fail-safe
    packs: tuple[SimPack, ...]  # copies of the simulated packs at this tick
    bank_current: float  # what flows, + = charging
    source_present: bool


class Bank:
    def __init__(self, specs: list[PackSpec], config: Any, seed: int = 0) -> None:
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.current = 0.0
        self.voltage = 52.8
        self.source_present = True
        self.packs = [SimPack(i, s, ccl=s.ccl, dcl=s.dcl) for i, s in enumerate(specs)]
        self.last: TickResult | None = None
        self.saved_blocks: Any = {}  # what the daemon saves of TickResult.blocks
        self.engine, self.charge = self._engine(())

    def _engine(self, known: Any) -> tuple[Engine, FlakyCharge]:
        built = build_strategies(self.config)
        charge = FlakyCharge(built.charge)
        engine = Engine(self.config, known, strategies=Strategies(built.current, built.soc, charge),
                        blocks=self.saved_blocks)
        return engine, charge

    # ---- physics and publishing

    def pack_currents(self) -> list[float]:
        sign = 1.0 if self.current >= 0 else -1.0
        conductance = [1.0 / p.spec.resistance if p.conducts(sign) else 0.0 for p in self.packs]
        total = sum(conductance)
        if total == 0.0:
            return [0.0] * len(self.packs)
        return [self.current * g / total for g in conductance]

    def _raw(self, pack: SimPack, current: float) -> dict[str, Any]:
        cells = pack.spec.cells
        # a pack carrying no current (bank at rest, or its FET open in the flowing direction)
        # publishes no change at all: quiet, not dead
        noisy = current != 0.0
        jitter = self.rng.uniform(-0.05, 0.05) if noisy else 0.0
        base = self.voltage if noisy else 52.8
        voltage = round(base + current * pack.spec.resistance / 1000 + jitter, 2)
        amps = round(current + (self.rng.uniform(-0.3, 0.3) if noisy else 0.0), 1)
        values: dict[str, Any] = {
            "/ProductName": "SerialBattery(JK)", "/Serial": pack.id, "/CustomName": f"Pack {pack.index}",
            "/Dc/0/Voltage": voltage, "/Dc/0/Current": amps,
            "/InstalledCapacity": pack.spec.capacity, "/Soc": 60.0,
            "/Info/MaxChargeVoltage": round(cells * pack.cvl_per_cell, 2),
            "/Info/MaxChargeCurrent": pack.ccl, "/Info/MaxDischargeCurrent": pack.dcl,
            "/Io/AllowToCharge": 1, "/Io/AllowToDischarge": 1,
            "/System/NrOfModulesBlockingCharge": 0, "/System/NrOfModulesBlockingDischarge": 0,
            "/System/NrOfModulesOnline": 1, "/System/NrOfCellsPerBattery": cells,
            "/System/MinCellVoltage": round(voltage / cells - 0.005, 3),
            "/System/MaxCellVoltage": round(voltage / cells + 0.005, 3),
            "/Voltages/Sum": voltage,
        }
        for direction in DIRECTIONS:
            way = pack.blocks[direction]
            if way is not None:
                values[way[0]] = way[1]
        values.update(pack.garbage)
        if pack.link_lost:
            values.update({"/System/NrOfModulesOnline": 0, "/Dc/0/Voltage": None, "/Dc/0/Current": None})
        return values

    def _publish(self, pack: SimPack, values: dict[str, Any]) -> None:
        for path, value in values.items():
            old = pack.values.get(path, ())
            if type(old) is not type(value) or not (old == value or (old != old and value != value)):
                pack.values[path] = value
                pack.changed_at[path] = self.now
                pack.last_change = self.now
        if not pack.link_lost:
            pack.fresh = dict(pack.values)

    def readings(self) -> list[ServiceReading]:
        out = [ServiceReading(p.service, dict(p.values), p.last_change, p.appeared_at,
                              dict(p.changed_at)) for p in self.packs if p.present]
        if self.source_present:
            # a Multi whose current and voltage jitter as real readings do
            out.append(ServiceReading(VEBUS, {"/Connected": 1, "/Dc/0/Current": self.current,
                                              "/Dc/0/Voltage": self.voltage + self.rng.uniform(-.05, .05)},
                                      self.now, 0.0))
        return out

    # ---- steps

    def apply(self, step: Step) -> None:
        pack = self.packs[step.pack % len(self.packs)]
        kind, arg = step.kind, step.arg
        if kind == "current":
            self.current = float(arg)
        elif kind == "rest":
            self.current = 0.0
        elif kind == "freeze":
            pack.frozen = True
        elif kind == "thaw":
            pack.frozen = False
        elif kind == "vanish":
            pack.present = False
            pack.values, pack.changed_at = {}, {}
        elif kind == "return" and not pack.present:
            pack.present, pack.appeared_at, pack.last_change = True, self.now, self.now
        elif kind == "invalid":
            pack.garbage[arg[0]] = arg[1]
        elif kind == "repair":
            pack.garbage.clear()
        elif kind == "block":
            pack.blocks[arg[0]] = BLOCK_WAYS[arg[0]][arg[1]]
        elif kind == "unblock":
            pack.blocks[arg[0]] = None
        elif kind == "link_loss":
            pack.link_lost = True
        elif kind == "link_back":
            pack.link_lost = False
        elif kind == "limits":
            pack.ccl = pack.spec.ccl * arg[0]
            pack.dcl = pack.spec.dcl * arg[1]
            pack.cvl_per_cell = 3.45 + arg[2] / pack.spec.cells
        elif kind == "restart":
            known = self.last.known_packs if self.last is not None else ()
            self.engine, self.charge = self._engine(known)
            for p in self.packs:
                if not p.present:
                    p.fresh = None  # a new process learns a missing pack's data only when it is back
        elif kind == "forget":
            self.engine.forget_missing()
            for p in self.packs:
                if not p.present:
                    p.fresh = None
        elif kind == "source_loss":
            self.source_present = False
        elif kind == "source_back":
            self.source_present = True
        self.charge.fail = kind == "fail"

    def tick(self, step: Step) -> Tick:
        self.apply(step)
        self.now += step.dt
        if self.current != 0.0:
            self.voltage = round(52.8 + self.rng.uniform(-0.2, 0.2), 2)
        for pack, current in zip(self.packs, self.pack_currents(), strict=True):
            if pack.present and not pack.frozen:
                self._publish(pack, self._raw(pack, current))
        readings = self.readings()
        try:
            result, failed = self.engine.tick(self.now, readings), False
        except Exception as error:  # noqa: BLE001 - as the daemon's loop does
            result, failed = self.engine.fail_safe(self.now, readings, error), True
        if not failed:
            self.last = result
        if result.blocks is not None:
            self.saved_blocks = dict(result.blocks)
        snapshot = tuple(SimPack(**{**p.__dict__, "blocks": dict(p.blocks), "garbage": dict(p.garbage),
                                    "values": dict(p.values), "changed_at": dict(p.changed_at),
                                    "fresh": dict(p.fresh) if p.fresh is not None else None})
                         for p in self.packs)
        return Tick(step, self.now, result, failed, snapshot, self.current, self.source_present)


def run(specs: list[PackSpec], sequence: list[Step], config: Any, seed: int = 0) -> Iterator[Tick]:
    """Play `sequence` on a bank of `specs`; one Tick per step."""
    bank = Bank(specs, config, seed)
    for step in sequence:
        yield bank.tick(step)
