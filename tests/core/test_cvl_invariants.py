"""CVL invariants over random fault sequences, driving the pure engine (no bus).

After every tick the published CVL stays within what the online packs' published data allows:
- own charge control: never above a pack's real cell count x max_cell_voltage, whatever cell count
  it reports, also while it is offline once its count was confirmed;
- pass-through "min": never above the lowest pack CVL;
- pass-through "absorption_hold": never above a pack that lowers its CVL to protect a cell (once it
  was seen at the higher CVL in the same phase), a pack without a charge mode, a pack whose phase
  was not seen from its start (after a restart, or changed while offline), or a floating pack never
  seen charging; never above the highest pack CVL; the lowest CVL once nobody charges; per cell,
  never above the highest per-cell CVL a charging pack asks for.

The bank: 1-6 packs of 15 or 16 cells in parallel (one bank voltage), each publishing like
dbus-serialbattery under velib: a value's change stamp moves only when it changes, under current
voltage and current jitter, at rest nothing changes. Faults: quiet (a frozen driver), vanish and
return, invalid values on any path the CVL rules read, a cell count that lies, charge-mode changes
with serialbattery's Float Transition ramp, protective CVL reductions and their recovery, and
daemon restarts (the engine rebuilt with the known pack ids, as after a reboot).

Bounded by default (a few seconds); AGGBATT_LONG_TESTS=1 (`scripts/test --long`) runs many more.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggbatt.config import config_from_dict
from aggbatt.core.engine import Engine
from aggbatt.core.pack_paths import CVL
from aggbatt.core.snapshot import ServiceReading

LONG = os.environ.get("AGGBATT_LONG_TESTS") == "1"
EXAMPLES = 3000 if LONG else 150
WALL = datetime(2024, 6, 5, 12, 0)  # June: the LFP preset's 3.40 V per cell, max 3.45 V
FLOAT_CELL = 3.35
RAMP = 0.002  # V/s of serialbattery's Float Transition (bank volts)
EPS = 1e-6

MODES = ("Bulk", "Absorption", "Float Transition", "Float")
GARBAGE: tuple[Any, ...] = (None, float("nan"), "x", -1.0, 1e9, True, 0)
PATHS = ("/Info/MaxChargeVoltage", "/Info/ChargeMode", "/System/NrOfCellsPerBattery",
         "/System/MinCellVoltage", "/System/MaxCellVoltage", "/Voltages/Sum", "/Dc/0/Voltage",
         "/Dc/0/Current")


@dataclass
class SimPack:
    index: int
    cells: int  # the real count
    charge_cell: float  # its own charge voltage per cell (not above the own mode's max cell)
    capacity: float
    reported_cells: int = 0
    mode: str = "Bulk"
    ramp: float | None = None  # its CVL while in Float Transition
    protect: float = 0.0  # V its CVL is lowered by to protect a cell
    present: bool = True
    quiet: bool = False
    garbage: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    changed_at: dict[str, float] = field(default_factory=dict)
    last_change: float = 0.0
    appeared_at: float = 0.0
    # What it last published (consistent with `values`): mode, CVL and protection.
    published: tuple[str, float, float] | None = None
    # What the engine has seen of it while online: last class and highest CVL in that class.
    seen_class: str | None = None
    seen_peak: float = 0.0
    seen_charging: bool = False
    entered: bool = False  # its present phase was seen from its start
    counted_once: bool = False  # it was online with its real cell count confirmed
    gap: bool = False  # it was offline or without a charge mode at the last tick

    def forget(self) -> None:
        """A restarted daemon has seen nothing of it yet."""
        self.seen_class, self.seen_peak, self.seen_charging = None, 0.0, False
        self.entered = self.gap = self.counted_once = False

    def cvl(self) -> float:
        if self.mode == "Float":
            nominal = self.cells * FLOAT_CELL
        elif self.mode == "Float Transition":
            nominal = self.ramp if self.ramp is not None else self.cells * self.charge_cell
        else:
            nominal = self.cells * self.charge_cell
        return round(nominal - self.protect, 2)


@dataclass(frozen=True)
class Step:
    kind: str
    pack: int
    arg: Any
    dt: float


# Repeated kinds are drawn more often: the phase changes and reductions that the CVL rules judge.
KINDS = ("none", "current", "voltage", "quiet", "wake", "vanish", "return", "invalid", "invalid",
         "repair", "mode", "mode", "mode", "protect", "protect", "recover", "lie", "restart")


# Phases and reductions with the faults that interrupt them, for the absorption_hold property.
HOLD_KINDS = ("none", "mode", "mode", "mode", "protect", "protect", "recover", "vanish", "return",
              "invalid", "repair", "restart")


BANK_VOLTAGES = st.sampled_from([48.0, 50.5, 52.8, 53.6, 55.0])


@st.composite
def steps(draw: st.DrawFn, kinds: tuple[str, ...] = KINDS) -> Step:
    kind = draw(st.sampled_from(kinds))
    arg: Any = None
    if kind == "current":
        arg = draw(st.sampled_from([-80.0, -5.0, 0.0, 5.0, 80.0]))
    elif kind == "voltage":
        arg = draw(BANK_VOLTAGES)
    elif kind == "invalid":
        arg = (draw(st.sampled_from(PATHS)), draw(st.sampled_from(GARBAGE)))
    elif kind == "mode":
        arg = draw(st.sampled_from(MODES))
    elif kind == "protect":
        arg = draw(st.sampled_from([0.05, 0.2, 0.8]))
    elif kind == "lie":
        arg = draw(st.sampled_from([0, 8, 24, 30]))  # 0: the truth again
    dt = draw(st.sampled_from([1.0, 1.0, 2.0, 6.0, 11.0, 30.0, 130.0]))
    return Step(kind, draw(st.integers(0, 5)), arg, dt)


# (real cells, charge voltage per cell, capacity, reported cells: 0 = the truth)
BANKS = st.lists(st.tuples(st.sampled_from([15, 16]), st.sampled_from([3.40, 3.45]),
                           st.sampled_from([100.0, 200.0, 280.0]), st.sampled_from([0, 0, 0, 8, 24])),
                 min_size=1, max_size=6)
SEQUENCES = st.lists(steps(), min_size=5, max_size=40)


class Bank:
    def __init__(self, specs: list[tuple[int, float, float, int]], config: Any, seed: int,
                 voltage: float = 52.8) -> None:
        self.rng = random.Random(seed)
        self.config = config
        self.engine = Engine(config)
        self.known: frozenset[str] = frozenset()
        self.now = 0.0
        self.current = 40.0
        self.voltage = voltage
        self.packs = [SimPack(i, cells, cell, cap, reported_cells=reported or cells)
                      for i, (cells, cell, cap, reported) in enumerate(specs)]

    def apply(self, step: Step) -> None:
        pack = self.packs[step.pack % len(self.packs)]
        kind, arg = step.kind, step.arg
        if kind == "current":
            self.current = arg
        elif kind == "voltage":
            self.voltage = arg
        elif kind in ("quiet", "wake"):
            pack.quiet = kind == "quiet"
        elif kind == "vanish":
            pack.present, pack.values, pack.changed_at, pack.published = False, {}, {}, None
        elif kind == "return" and not pack.present:
            pack.present, pack.appeared_at, pack.last_change = True, self.now, self.now
        elif kind == "invalid":
            pack.garbage[arg[0]] = arg[1]
        elif kind == "repair":
            pack.garbage.clear()
        elif kind == "mode":
            if arg == "Float Transition" and pack.mode != arg:
                pack.ramp = pack.cvl()
            pack.mode, pack.protect = arg, 0.0
        elif kind == "protect" and pack.mode != "Float Transition":
            pack.protect += arg
        elif kind == "recover":
            pack.protect = 0.0
        elif kind == "lie":
            pack.reported_cells = arg or pack.cells
        elif kind == "restart":
            self.engine = Engine(self.config, self.known)
            for each in self.packs:
                each.forget()

    def raw(self, pack: SimPack, share: float) -> dict[str, Any]:
        moving = self.current != 0.0
        volts = round(self.voltage + (self.rng.uniform(-0.03, 0.03) if moving else 0.0), 2)
        amps = round(self.current * share + (self.rng.uniform(-0.2, 0.2) if moving else 0.0), 1)
        cell = volts / pack.cells
        values: dict[str, Any] = {
            "/ProductName": "SerialBattery(JK)", "/Serial": f"S{pack.index}",
            "/Dc/0/Voltage": volts, "/Dc/0/Current": amps, "/Voltages/Sum": volts,
            "/InstalledCapacity": pack.capacity, "/Soc": 80.0,
            "/Info/MaxChargeVoltage": pack.cvl(), "/Info/ChargeMode": pack.mode,
            "/Info/MaxChargeCurrent": 100.0, "/Info/MaxDischargeCurrent": 100.0,
            "/Io/AllowToCharge": 1, "/Io/AllowToDischarge": 1, "/System/NrOfModulesOnline": 1,
            "/System/NrOfCellsPerBattery": pack.reported_cells,
            "/System/MinCellVoltage": round(cell - 0.01, 3),
            "/System/MaxCellVoltage": round(cell + 0.01, 3),
        }
        values.update(pack.garbage)
        return values

    def publish(self, pack: SimPack, values: dict[str, Any]) -> None:
        for path, value in values.items():
            old = pack.values.get(path, ())
            if type(old) is not type(value) or not (old == value or (old != old and value != value)):
                pack.values[path] = value
                pack.changed_at[path] = self.now
                pack.last_change = self.now
        pack.published = (pack.mode, pack.cvl(), pack.protect)

    def tick(self, step: Step) -> tuple[float | None, list[SimPack]]:
        self.apply(step)
        self.now += step.dt
        for pack in self.packs:
            if pack.mode == "Float Transition" and pack.ramp is not None:
                pack.ramp = max(pack.cells * FLOAT_CELL, pack.ramp - RAMP * step.dt)
        total = sum(p.capacity for p in self.packs)
        for pack in self.packs:
            if pack.present and not pack.quiet:
                self.publish(pack, self.raw(pack, pack.capacity / total))
        readings = [ServiceReading(f"com.victronenergy.battery.ttyUSB{p.index}", dict(p.values),
                                   p.last_change, p.appeared_at, dict(p.changed_at))
                    for p in self.packs if p.present]
        result = self.engine.tick(self.now, readings, wall=WALL)
        self.known = result.known_packs
        online_ids = {status.id for status in result.packs if status.online}
        online = [p for p in self.packs if f"S{p.index}" in online_ids]
        cvl = result.values[CVL]
        return cvl, online


def published_cvl(pack: SimPack) -> float:
    return float(pack.values["/Info/MaxChargeVoltage"])


CHARGING, TRANSITION, FLOAT, UNKNOWN = "charging", "transition", "float", "unknown"


def published_class(pack: SimPack) -> str:
    """The phase its published /Info/ChargeMode names (serialbattery's texts)."""
    mode = pack.values.get("/Info/ChargeMode")
    if not isinstance(mode, str) or not mode.strip():
        return UNKNOWN
    if "float" not in mode.lower():
        return CHARGING
    return TRANSITION if "transition" in mode.lower() else FLOAT


def check_own(cvl: float | None, packs: list[SimPack], online: list[SimPack],
              max_cell: float) -> None:
    """Online or not: a pack once seen with its real count keeps its per-cell cap."""
    for pack in packs:
        if pack.counted_once or any(pack is each for each in online):
            assert cvl is None or cvl <= pack.cells * max_cell + EPS, (pack, cvl)
    if online:
        assert cvl is not None


def check_min(cvl: float | None, online: list[SimPack]) -> None:
    if online:
        assert cvl is not None
        assert cvl <= min(published_cvl(p) for p in online) + EPS


def _volts(value: Any) -> bool:
    return type(value) is float and 0.0 < value < 100.0


def counted(pack: SimPack) -> bool:
    """It publishes its real cell count and the voltages that confirm it."""
    v = pack.values
    return (v.get("/System/NrOfCellsPerBattery") == pack.cells
            and _volts(v.get("/System/MinCellVoltage")) and _volts(v.get("/System/MaxCellVoltage"))
            and (_volts(v.get("/Voltages/Sum")) or _volts(v.get("/Dc/0/Voltage"))))


def check_hold(cvl: float | None, online: list[SimPack]) -> None:
    if not online:
        return
    assert cvl is not None
    cvls = {p.index: published_cvl(p) for p in online}
    classes = {p.index: published_class(p) for p in online}
    assert cvl <= max(cvls.values()) + EPS
    charging = [p for p in online if classes[p.index] == CHARGING]
    if not charging:
        assert cvl <= min(cvls.values()) + EPS
    else:
        classed = [p for p in online if classes[p.index] != UNKNOWN]
        if all(counted(p) for p in classed):
            # Held per cell: no pack above the highest per-cell CVL a charging pack asks for.
            per_cell = max(cvls[p.index] / p.cells for p in charging)
            for pack in classed:
                assert cvl <= pack.cells * per_cell + EPS, ("per cell", pack)
        else:
            assert cvl <= min(cvls[p.index] for p in charging) + EPS, "own CVL, counts unknown"
    for pack in online:
        own, cls = cvls[pack.index], classes[pack.index]
        if cls == UNKNOWN:
            assert cvl <= own + EPS, ("no charge mode", pack)
            continue
        if cls in (FLOAT, TRANSITION) and not pack.seen_charging:
            assert cvl <= own + EPS, ("float, never seen charging", pack)
        entered = pack.entered if pack.seen_class == cls else (
            pack.seen_class is not None and not pack.gap)
        if not entered:
            assert cvl <= own + EPS, ("phase not seen from its start", pack)
        assert pack.published is not None
        protecting = pack.published[2] > 0.0
        if (protecting and cls != TRANSITION and pack.seen_class == cls
                and pack.seen_peak > own + 0.01):
            assert cvl <= own + EPS, ("protective reduction", pack)


def remember(packs: list[SimPack], online: list[SimPack]) -> None:
    """What the strategy could have learnt from this tick (checked before, learnt after)."""
    online_ids = {pack.index for pack in online}
    for pack in packs:
        if pack.index in online_ids and counted(pack):
            pack.counted_once = True
        cls = published_class(pack) if pack.index in online_ids else UNKNOWN
        if cls == UNKNOWN:
            pack.gap = True
            continue
        if pack.seen_class != cls:
            pack.entered = pack.seen_class is not None and not pack.gap
        pack.gap = False
        own = published_cvl(pack)
        pack.seen_peak = own if pack.seen_class is not cls else max(pack.seen_peak, own)
        pack.seen_class = cls
        pack.seen_charging = pack.seen_charging or cls == CHARGING


CONFIGS = {
    "own": config_from_dict({"charge": {"strategy": "own"}}),
    "min": config_from_dict({"charge": {"passthrough": {"cvl_mode": "min"}}}),
    "absorption_hold": config_from_dict({"charge": {"passthrough": {"cvl_mode": "absorption_hold"}}}),
}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CONFIGS)), BANKS, SEQUENCES, st.integers(0, 2**16), BANK_VOLTAGES)
def test_cvl_stays_within_every_pack_limit_under_faults(mode, specs, sequence, seed, voltage):
    config = CONFIGS[mode]
    bank = Bank(specs, config, seed, voltage)
    for step in sequence:
        cvl, online = bank.tick(step)
        if mode == "own":
            check_own(cvl, bank.packs, online, config.charge.own.max_cell_voltage)
        elif mode == "min":
            check_min(cvl, online)
        else:
            check_hold(cvl, online)
        remember(bank.packs, online)


# Cell counts that lie or go missing, and packs dropping out, for the own-mode property.
OWN_KINDS = ("none", "voltage", "current", "vanish", "return", "invalid", "invalid", "repair",
             "lie", "lie", "quiet", "wake", "restart")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BANKS.filter(lambda specs: len({cells for cells, *_ in specs}) > 1),
       st.lists(steps(OWN_KINDS), min_size=5, max_size=30), st.integers(0, 2**16), BANK_VOLTAGES)
def test_own_cvl_keeps_every_pack_within_its_cells(specs, sequence, seed, voltage):
    config = CONFIGS["own"]
    bank = Bank(specs, config, seed, voltage)
    for step in sequence:
        cvl, online = bank.tick(step)
        check_own(cvl, bank.packs, online, config.charge.own.max_cell_voltage)
        remember(bank.packs, online)


HOLD_BANKS = st.lists(st.tuples(st.sampled_from([15, 16]), st.sampled_from([3.40, 3.45]),
                                st.just(200.0), st.just(0)), min_size=2, max_size=3)


@settings(max_examples=2 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HOLD_BANKS, st.lists(steps(HOLD_KINDS), min_size=5, max_size=30), st.integers(0, 2**16))
def test_absorption_hold_never_exceeds_a_protective_reduction(specs, sequence, seed):
    bank = Bank(specs, CONFIGS["absorption_hold"], seed)
    for step in sequence:
        cvl, online = bank.tick(step)
        check_hold(cvl, online)
        remember(bank.packs, online)


def test_a_reduction_seen_before_a_pack_drops_out_still_caps_when_it_is_back():
    """The scenario behind the absorption_hold memory, end to end through the engine."""
    bank = Bank([(16, 3.55, 280.0, 0), (16, 3.55, 280.0, 0)], CONFIGS["absorption_hold"], seed=1)
    assert bank.tick(Step("mode", 0, "Absorption", 1.0))[0] == 56.8
    assert bank.tick(Step("protect", 0, 1.6, 1.0))[0] == 55.2
    cvl, online = bank.tick(Step("invalid", 0, ("/Dc/0/Voltage", None), 1.0))
    assert [p.index for p in online] == [1]
    bank.tick(Step("repair", 0, None, 1.0))
    for _ in range(8):
        cvl, online = bank.tick(Step("none", 0, None, 1.0))
    assert len(online) == 2 and cvl == 55.2
