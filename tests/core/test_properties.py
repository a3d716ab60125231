"""Hypothesis: safety invariants of the engine for any pack states.

The oracle below is written from the rules (docs/safety.md §1, the ranges
in validation.py's header), not from the engine's code: a value counts only when it is a finite number
in its documented range; a pack's share is max(capacity share, measured share), the measured share
counting only while the bank current in that direction is at least freshness.idle_current (2 A).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggbatt.config import config_from_dict
from aggbatt.core.engine import Engine, TickResult
from aggbatt.core.events import Event
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.strategies.charge import CHARGE, DISCHARGE, share_limit
from aggbatt.core.validation import PACK_PATHS, revalidate, validate
from tests.factories import SB, snapshot

POLICIES = ("degrade", "block_charge", "block")
CONFIGS = {p: config_from_dict({"freshness": {"on_pack_lost": p}}) for p in POLICIES}
IDLE_CURRENT = 2.0       # default freshness.idle_current
STALE_AFTER = 10.0       # default freshness.stale_after
T1, T2 = 100.0, 160.0

GARBAGE = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.lists(st.integers(), max_size=2), st.booleans(), st.integers(-10**15, 10**15),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)




# ---- oracle -------------------------------------------------------------------------------------


def number(x: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    if (x <= low if low_open else x < low) or (x >= high if high_open else x > high):
        return None
    return float(x)


def flag(x: Any) -> int | None:
    if isinstance(x, bool):
        return int(x)
    value = number(x, 0, 1)
    return int(value) if value is not None and value.is_integer() else None


def count(x: Any) -> int | None:
    value = number(x, 0, 1000)
    return int(value) if value is not None and value.is_integer() else None


def volts(x: Any) -> float | None:
    return number(x, 0, 100, low_open=True)


def amps(x: Any) -> float | None:
    return number(x, -5000, 5000, low_open=True, high_open=True)


def limit(x: Any) -> float | None:
    return number(x, 0, 5000, high_open=True)


def shares(raw: dict[str, dict[str, Any]], direction: int) -> dict[str, float]:
    capacity = {i: number(v["/InstalledCapacity"], 1, 100_000) for i, v in raw.items()}
    total = sum(c for c in capacity.values() if c is not None)
    out = {i: (c / total if c is not None else 1.0) for i, c in capacity.items()}
    bank = direction * sum(amps(v["/Dc/0/Current"]) or 0.0 for v in raw.values())
    if bank >= IDLE_CURRENT:
        for i, v in raw.items():
            measured = max(0.0, direction * (amps(v["/Dc/0/Current"]) or 0.0)) / bank
            out[i] = max(out[i], measured)
    return out


# ---- generated banks ----------------------------------------------------------------------------


@st.composite
def pack_raw(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """Half the packs are clean; in the others each path is garbage one time in four."""
    dirty = draw(st.booleans())

    def mostly(valid: st.SearchStrategy[Any]) -> Any:
        # (st.one_of would flatten GARBAGE's own alternatives and make garbage the majority)
        return draw(GARBAGE) if dirty and draw(st.integers(0, 3)) == 0 else draw(valid)

    amps_ = st.floats(-300, 300)
    limit_ = st.sampled_from([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).flatmap(
        lambda k: st.floats(0, 500 * k))  # CCL/DCL 0 one time in eight
    return {
        "/ProductName": mostly(st.just("SerialBattery(JK)")),
        "/Serial": f"S{index:02d}",
        "/CustomName": mostly(st.sampled_from(["", "Pack", "Garage pack"])),
        "/Dc/0/Voltage": mostly(st.floats(40, 60)),
        "/Dc/0/Current": mostly(amps_),
        "/InstalledCapacity": mostly(st.floats(1, 1000)),
        "/Soc": mostly(st.floats(0, 100)),
        "/Info/MaxChargeVoltage": mostly(st.floats(40, 60)),
        "/Info/MaxChargeCurrent": mostly(limit_),
        "/Info/MaxDischargeCurrent": mostly(limit_),
        "/Io/AllowToCharge": mostly(st.sampled_from([0, 1, 1, 1, 1, 1, 1, 1])),
        "/Io/AllowToDischarge": mostly(st.sampled_from([0, 1, 1, 1, 1, 1, 1, 1])),
        "/System/NrOfModulesBlockingCharge": mostly(st.sampled_from([0, 0, 0, 0, 0, 0, 0, 1])),
        "/System/NrOfModulesBlockingDischarge": mostly(st.sampled_from([0, 0, 0, 0, 0, 0, 0, 1])),
        "/System/NrOfModulesOnline": mostly(st.sampled_from([1, 1, 1, 1, 1, 1, 1, 0])),
        "/Dc/0/Temperature": mostly(st.floats(-20, 60)),
        "/Alarms/HighCellVoltage": mostly(st.sampled_from([0, 1, 2])),
    }


@st.composite
def histories(draw: st.DrawFn) -> dict[str, Any]:
    """Two ticks (T1, T2) of a bank of 1-16 packs; packs come and go, freeze or update."""
    n = draw(st.integers(1, 16))
    packs = []
    for i in range(n):
        packs.append({
            "raw": draw(pack_raw(i)),
            "present": (draw(st.integers(0, 3)) > 0, draw(st.integers(0, 4)) > 0),
            # last change before T1, and before T2: frozen since T1, just now, or any time between
            "changed": (draw(st.sampled_from([T1, T1 - 3.0]) | st.floats(0, T1)),
                        draw(st.sampled_from([None, T2 - 5.0, T2 - 1.0, T2]) | st.floats(T1, T2))),
        })
    return {"packs": packs, "policy": draw(st.sampled_from(("degrade",) * 4 + POLICIES[1:]))}


def readings(history: dict[str, Any], step: int,
             override: dict[str, dict[str, Any]] | None = None) -> list[ServiceReading]:
    out = []
    for i, pack in enumerate(history["packs"]):
        if not pack["present"][step]:
            continue
        first, later = pack["changed"]
        last_change = first if step == 0 or later is None else later
        values = dict(pack["raw"])
        values.update((override or {}).get(f"S{i:02d}", {}))
        out.append(ServiceReading(f"{SB}ttyUSB{i}", values, last_change, 0.0))
    return out


def play(history: dict[str, Any], override: dict[str, dict[str, Any]] | None = None) -> tuple[Engine, TickResult]:
    engine = Engine(CONFIGS[history["policy"]])
    engine.tick(T1, readings(history, 0))
    return engine, engine.tick(T2, readings(history, 1, override))


def online_raw(history: dict[str, Any], result: TickResult) -> dict[str, dict[str, Any]]:
    online = {p.id for p in result.packs if p.online}
    return {f"S{i:02d}": p["raw"] for i, p in enumerate(history["packs"]) if f"S{i:02d}" in online}


def assert_publishable(values: Any) -> None:
    for path, value in values.items():
        assert value is None or isinstance(value, (int, str)) or (
            isinstance(value, float) and math.isfinite(value)), (path, value)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(histories())
def test_limits_never_exceed_any_online_packs_share(history: dict[str, Any]) -> None:
    _, result = play(history)
    v = result.values
    assert_publishable(v)
    online = online_raw(history, result)
    n_offline = len(result.packs) - len(online)
    if not online:
        assert v["/Info/MaxChargeVoltage"] is None
        assert v["/Info/MaxChargeCurrent"] is None and v["/Info/MaxDischargeCurrent"] is None
        return
    for pack_id, raw in online.items():
        # an online pack is never one with invalid V, I or limits, a reported link loss, or stale data
        assert volts(raw["/Dc/0/Voltage"]) is not None and amps(raw["/Dc/0/Current"]) is not None
        assert volts(raw["/Info/MaxChargeVoltage"]) is not None
        assert limit(raw["/Info/MaxChargeCurrent"]) is not None
        assert limit(raw["/Info/MaxDischargeCurrent"]) is not None
        assert count(raw["/System/NrOfModulesOnline"]) != 0
        age = next(p.age for p in result.packs if p.id == pack_id)
        assert age is not None
        own = amps(raw["/Dc/0/Current"])
        if own is not None and abs(own) >= IDLE_CURRENT:   # reports current: must be moving
            assert age <= STALE_AFTER
    cvl, ccl, dcl = v["/Info/MaxChargeVoltage"], v["/Info/MaxChargeCurrent"], v["/Info/MaxDischargeCurrent"]
    # packs that are not online may only lower it (their last fresh CVL still caps)
    assert cvl <= min(volts(r["/Info/MaxChargeVoltage"]) for r in online.values())  # type: ignore[type-var,operator]
    assert ccl is not None and ccl >= 0.0 and dcl is not None and dcl >= 0.0
    for direction, bank_limit, path in ((1, ccl, "/Info/MaxChargeCurrent"),
                                        (-1, dcl, "/Info/MaxDischargeCurrent")):
        for pack_id, share in shares(online, direction).items():
            own = limit(online[pack_id][path])
            assert own is not None
            assert share * bank_limit <= own + 1e-9 * max(1.0, own), (pack_id, share, bank_limit, own)
    blocks_charge = any(
        limit(r["/Info/MaxChargeCurrent"]) == 0.0 or flag(r["/Io/AllowToCharge"]) == 0
        or (count(r["/System/NrOfModulesBlockingCharge"]) or 0) > 0 for r in online.values())
    blocks_discharge = any(
        limit(r["/Info/MaxDischargeCurrent"]) == 0.0 or flag(r["/Io/AllowToDischarge"]) == 0
        or (count(r["/System/NrOfModulesBlockingDischarge"]) or 0) > 0 for r in online.values())
    policy = history["policy"]
    if blocks_charge or (n_offline and policy in ("block_charge", "block")):
        assert ccl == 0.0
    if blocks_discharge or (n_offline and policy == "block"):
        assert dcl == 0.0


def bank_only(values: Mapping[str, Any]) -> dict[str, Any]:
    return {path: value for path, value in values.items() if not path.startswith("/Packs/")}


@SETTINGS
@given(histories(), st.floats(0, 499), st.floats(40, 60))
def test_offline_packs_values_never_enter_the_measurements(history: dict[str, Any], new_limit: float,
                                            new_cvl: float) -> None:
    _, result = play(history)
    offline = [p.id for p in result.packs if not p.online]
    override: dict[str, dict[str, Any]] = {}
    for i, pack in enumerate(history["packs"]):
        pack_id = f"S{i:02d}"
        if pack_id not in offline:
            continue
        raw = pack["raw"]
        changes: dict[str, Any] = {}
        # change every usable limit to another usable one (an invalid one stays invalid, so the
        # pack stays offline for the same reason), and the capacity and SoC alike. Its current is
        # left alone: a pack's own current picks its own staleness limit (freshness.py header).
        for path in ("/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent"):
            if limit(raw[path]) is not None:
                changes[path] = new_limit + (1.0 if raw[path] == new_limit else 0.0)
        if volts(raw["/Info/MaxChargeVoltage"]) is not None:
            changes["/Info/MaxChargeVoltage"] = new_cvl
        if number(raw["/Soc"], 0, 100) is not None:
            changes["/Soc"] = new_limit / 5
        if number(raw["/InstalledCapacity"], 1, 100_000) is not None:
            changes["/InstalledCapacity"] = new_limit + 1.0
        override[pack_id] = changes
    _, changed = play(history, override)
    assert [p.online for p in changed.packs] == [p.online for p in result.packs]
    # they never enter the measurements; their limits and blocks still bound the bank's, and
    # /Packs/<n>/ shows each pack's own readings on purpose
    bounded = {"/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent",
               "/Info/ChargeLimitation", "/Info/DischargeLimitation", "/Io/AllowToCharge",
               "/Io/AllowToDischarge", "/System/NrOfModulesBlockingCharge",
               "/System/NrOfModulesBlockingDischarge"}
    assert ({k: v for k, v in bank_only(changed.values).items() if k not in bounded}
            == {k: v for k, v in bank_only(result.values).items() if k not in bounded})


@SETTINGS
@given(histories())
def test_fail_safe_is_below_every_online_pack(history: dict[str, Any]) -> None:
    engine, result = play(history)
    online = online_raw(history, result)
    safe = engine.fail_safe(T2, readings(history, 1), RuntimeError("boom")).values
    assert_publishable(safe)
    assert safe["/Info/MaxChargeCurrent"] == 0.0
    assert safe["/Alarms/InternalFailure"] == 2
    dcl, cvl = safe["/Info/MaxDischargeCurrent"], safe["/Info/MaxChargeVoltage"]
    for raw in online.values():
        assert dcl <= limit(raw["/Info/MaxDischargeCurrent"])  # type: ignore[operator]
        assert cvl is not None  # every online pack has a valid voltage and CVL
        assert cvl <= volts(raw["/Info/MaxChargeVoltage"])  # type: ignore[operator]
        assert cvl <= volts(raw["/Dc/0/Voltage"])  # type: ignore[operator]
    if online:
        mean_voltage = sum(volts(r["/Dc/0/Voltage"]) for r in online.values()) / len(online)  # type: ignore[misc]
        assert cvl <= mean_voltage + 1e-9


ANY_VALUE = st.one_of(GARBAGE, st.floats(-1e6, 1e6), st.integers(-5, 5), st.just("SerialBattery"))


@SETTINGS
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(sorted(PACK_PATHS)), ANY_VALUE),
                          st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=2)),
                          st.sampled_from(["ttyUSB0", "ttyUSB1", "aggregate", "x.y"])),
                max_size=6),
       st.sampled_from(POLICIES), st.booleans())
def test_garbage_never_raises(services: list[tuple[dict[str, Any], Any, str]], policy: str,
                              cells: bool) -> None:
    config = CONFIGS[policy]
    if cells:
        config = config.model_copy(update={
            "discovery": config.discovery.model_copy(update={"cell_voltages": True})})
    engine = Engine(config, known_packs=["S00", "x@" + SB + "y", ""])
    batch = [ServiceReading(SB + name, values, stamp, stamp)  # type: ignore[arg-type]
             for values, stamp, name in services]
    for now in (0.0, 5.0, 500.0):
        result = engine.tick(now, batch)
        assert_publishable(result.values)
        assert all(isinstance(e, Event) and str(e) for e in result.events)
        assert_publishable(engine.fail_safe(now, batch, ValueError()).values)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0.1, 1000)), st.floats(-400, 400),
                          st.floats(0, 500)), min_size=1, max_size=16),
       st.floats(0, 10))
def test_share_limit_respects_every_pack(packs: list[tuple[float | None, float, float]],
                                         min_current: float) -> None:
    snaps = [snapshot(str(i), service="s", installed_capacity=cap, current=cur, ccl=lim, dcl=lim)
             for i, (cap, cur, lim) in enumerate(packs)]
    known = sum(c for c, _, _ in packs if c is not None)
    for direction in (CHARGE, DISCHARGE):
        bank_limit = share_limit(snaps, direction, min_current).limit
        assert bank_limit is not None and bank_limit >= 0.0
        bank_current = direction.sign * sum(cur for _, cur, _ in packs)
        for cap, cur, lim in packs:
            capacity_share = cap / known if cap is not None else 1.0
            assert capacity_share * bank_limit <= lim + 1e-9 * max(1.0, lim)
            if bank_current >= max(min_current, 1e-9):
                measured = max(0.0, direction.sign * cur) / bank_current
                assert measured * bank_limit <= lim + 1e-9 * max(1.0, lim)


# ---- incremental validation gives what a full validation gives ----------------------------------

CHANGED_PATHS = ("/Dc/0/Voltage", "/Dc/0/Current", "/Soc", "/Info/MaxChargeCurrent",
                 "/System/MaxVoltageCellId", "/Io/AllowToCharge", "/Voltages/Cell1", "/History/X")
STEPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(CHANGED_PATHS), ANY_VALUE),
    st.tuples(st.just("del"), st.sampled_from(CHANGED_PATHS), st.none()),
    st.tuples(st.just("tick"), st.none(), st.none()),
), max_size=40)


class FakeService:
    """Values and change stamps kept as bus/monitor.py keeps them: a stamp moves with its value."""

    def __init__(self, values: dict[str, Any], now: float) -> None:
        self.values = dict(values)
        self.changed_at = dict.fromkeys(values, now)
        self.appeared_at = now
        self.last_change = now

    def set(self, path: str, value: Any, now: float) -> None:
        old = self.values.get(path, ())
        if type(old) is type(value) and old == value:
            return
        self.values[path] = value
        self.changed_at[path] = now
        self.last_change = now

    def delete(self, path: str) -> None:
        self.values.pop(path, None)
        self.changed_at.pop(path, None)


@SETTINGS
@given(STEPS, st.lists(st.sampled_from([0.0, 0.0, 0.001, 1.0]), min_size=40, max_size=40),
       st.booleans())
def test_revalidate_equals_validate(steps: list[tuple[str, Any, Any]], clock: list[float],
                                    cells: bool) -> None:
    # clock steps of 0: several changes share a stamp, as with a coarse clock
    now = 0.0
    service = FakeService({"/Dc/0/Voltage": 53.0, "/Soc": 50.0}, now)
    previous = None
    for (op, path, value), step in zip(steps, clock, strict=False):  # steps may be fewer than the 40 clock steps
        now += step
        if op == "set":
            service.set(path, value, now)
        elif op == "del":
            service.delete(path)
        else:
            previous = revalidate(previous, service.values, service.changed_at, cells)
            full = validate(service.values, cells)
            assert (previous.values, previous.problems) == (full.values, full.problems)
    last = revalidate(previous, service.values, service.changed_at, cells)
    full = validate(service.values, cells)
    assert (last.values, last.problems) == (full.values, full.problems)


ENGINE_STEPS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2), st.sampled_from(sorted(PACK_PATHS)), ANY_VALUE),
    st.tuples(st.just("set"), st.integers(0, 2),
              st.sampled_from(["/Dc/0/Voltage", "/Dc/0/Current", "/Info/MaxChargeCurrent"]),
              st.floats(-10, 60)),
    st.tuples(st.just("leave"), st.integers(0, 2), st.none(), st.none()),
    st.tuples(st.just("appear"), st.integers(0, 2), st.none(), st.sampled_from([51.0, 53.0])),
    st.tuples(st.just("tick"), st.none(), st.none(), st.none()),
), max_size=30)


def fresh_pack(index: int, voltage: float) -> dict[str, Any]:
    return {
        "/ProductName": "SerialBattery(JK)", "/Serial": f"S{index}", "/Dc/0/Voltage": voltage,
        "/Dc/0/Current": 5.0, "/Soc": 50.0, "/InstalledCapacity": 100.0,
        "/Info/MaxChargeVoltage": 55.2, "/Info/MaxChargeCurrent": 50.0,
        "/Info/MaxDischargeCurrent": 50.0, "/System/NrOfModulesOnline": 1,
    }


@SETTINGS
@given(ENGINE_STEPS, st.sampled_from([0.0, 0.5, 3.0]))
def test_engine_with_change_stamps_equals_engine_without(
        steps: list[tuple[str, Any, Any, Any]], step: float) -> None:
    # packs leave and come back under the same service name with other values; a clock that
    # stands still (step 0) gives the new appearance the same stamps as the old one
    incremental, full = Engine(CONFIGS["degrade"]), Engine(CONFIGS["degrade"])
    now = 0.0
    services = {i: FakeService(fresh_pack(i, 53.0), now) for i in range(3)}
    steps = [*steps, ("tick", None, None, None)]
    for op, index, path, value in steps:
        now += step
        if op == "set" and index in services:
            services[index].set(path, value, now)
        elif op == "leave":
            services.pop(index, None)
        elif op == "appear" and index not in services:
            services[index] = FakeService(fresh_pack(index, value), now)
        elif op == "tick":
            with_stamps = [ServiceReading(f"{SB}ttyUSB{i}", s.values, s.last_change, s.appeared_at,
                                          s.changed_at) for i, s in services.items()]
            without = [ServiceReading(r.service, r.values, r.last_change, r.appeared_at)
                       for r in with_stamps]
            a, b = incremental.tick(now, with_stamps), full.tick(now, without)
            assert a.values == b.values
            assert a.events == b.events
            assert a.packs == b.packs
