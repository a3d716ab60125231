"""VictronDevices: the bank current from Multi, solar chargers, DC-DC converters and shunts."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggbatt.config import config_from_dict
from aggbatt.core.engine import Engine
from aggbatt.core.events import Event, VictronCurrentBack, VictronCurrentLost
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.strategies import TickContext
from aggbatt.core.strategies.victron_current import VictronDevices, VictronParams
from tests import factories
from tests.core.test_engine import run
from tests.factories import Bank, snapshot, tick_context

AGGREGATE = "com.victronenergy.battery.aggregate"
GRACE = 10.0                       # stale_after, also the start-up grace
LATER = 100.0                      # a time well after the grace


reading = partial(factories.reading, last_change=LATER)


def multi(current: Any, connected: Any = 1, **kw: Any) -> ServiceReading:
    return reading("com.victronenergy.vebus.ttyS4", Connected=connected, Dc__0__Current=current, **kw)


def mppt(current: Any, suffix: str = "ttyS5", **kw: Any) -> ServiceReading:
    return reading(f"com.victronenergy.solarcharger.{suffix}", Dc__0__Current=current, **kw)


def shunt(current: Any, instance: int = 279, name: str = "", suffix: str = "ttyS6",
          product: str = "SmartShunt 500A/50mV", **kw: Any) -> ServiceReading:
    return reading(f"com.victronenergy.battery.{suffix}", Dc__0__Current=current,
                   DeviceInstance=instance, CustomName=name, ProductName=product, **kw)


def dcload(current: Any, instance: int = 290, name: str = "", suffix: str = "ttyS7",
           **kw: Any) -> ServiceReading:
    return reading(f"com.victronenergy.dcload.{suffix}", Dc__0__Current=current, DeviceInstance=instance,
                   CustomName=name, ProductName="SmartShunt 500A/50mV", **kw)


def pack(current: float, suffix: str = "ttyUSB0", instance: int = 1) -> ServiceReading:
    return reading(f"com.victronenergy.battery.{suffix}", Dc__0__Current=current,
                   DeviceInstance=instance, CustomName="", ProductName="SerialBattery(Jkbms)",
                   Info__MaxChargeVoltage=55.2)


def source(**kw: Any) -> VictronDevices:
    kw.setdefault("stale_after", GRACE)
    kw.setdefault("ignore", frozenset({AGGREGATE}))
    if "shunts" in kw:
        kw["shunts"] = tuple(kw["shunts"])
    return VictronDevices(VictronParams(**kw))


def measure(src: VictronDevices, *readings: ServiceReading, now: float = LATER, bms: float = -7.0,
            voltage: float | None = 52.0):
    return src.update(now, readings, bms, voltage)


# ----- the sum rule --------------------------------------------------------------------------


def test_multi_plus_solar_chargers_and_power() -> None:
    result = measure(source(), multi(-20.0), mppt(30.0), mppt(5.5, "ttyS8"), pack(3.0))
    assert result.source == "victron"
    assert result.current == pytest.approx(15.5)
    assert result.power == pytest.approx(52.0 * 15.5)
    assert result.problems == () and not result.block


def test_power_is_unknown_without_a_bank_voltage() -> None:
    assert measure(source(), mppt(10.0), voltage=None).power is None


def test_a_disconnected_multi_adds_nothing() -> None:
    for connected in (0, None, "1"):
        result = measure(source(), multi(-50.0, connected=connected), mppt(12.0))
        assert result.source == "victron" and result.current == pytest.approx(12.0), connected


def test_a_connected_multi_with_an_invalid_current_falls_back() -> None:
    src = source()
    for t, bad in enumerate((None, math.nan, "x", True, [])):
        result = measure(src, multi(bad), mppt(12.0), now=LATER + t, bms=-7.0)
        assert result.source == "bms" and result.current == -7.0 and result.power is None
        assert any("vebus.ttyS4" in p and "/Dc/0/Current" in p for p in result.problems)
    # one warning for the episode, not one per tick
    src2 = source()
    times = (0.0, LATER, LATER + 1, LATER + 2)           # silent at the start, then one warning
    events = [e for t in times for e in measure(src2, multi(None), mppt(1.0), now=t).events]
    assert len(events) == 1 and isinstance(events[0], VictronCurrentLost)
    assert not events[0].blocked


def test_shunts_in_battery_mode_add_and_dcload_shunts_subtract() -> None:
    devices = (multi(-30.0), mppt(40.0), shunt(-2.0, instance=279), dcload(6.0, instance=290))
    result = measure(source(shunts=[279, 290]), *devices)
    assert result.current == pytest.approx(-30.0 + 40.0 - 2.0 - 6.0)
    plus = measure(source(shunts=[279, 290], dcload_sign=1.0), *devices)
    assert plus.current == pytest.approx(-30.0 + 40.0 - 2.0 + 6.0)


def test_shunt_alone_is_the_bank_current() -> None:
    devices = (multi(-30.0), mppt(40.0), shunt(-2.5, name="Bank"), dcload(6.0))
    result = measure(source(shunts=["Bank"], shunt_alone=True), *devices)
    assert result.source == "victron" and result.current == pytest.approx(-2.5)
    assert result.parts == {"com.victronenergy.battery.ttyS6": -2.5}


def test_shunt_alone_without_a_battery_mode_shunt_falls_back() -> None:
    result = measure(source(all_shunts=True, shunt_alone=True), multi(-30.0), dcload(6.0))
    assert result.source == "bms"
    assert any("no battery-mode shunt" in p for p in result.problems)


def test_dcdc_only_when_included() -> None:
    devices = (mppt(10.0), reading("com.victronenergy.dcdc.ttyS9", Dc__0__Current=8.0))
    assert measure(source(), *devices).current == pytest.approx(10.0)
    assert measure(source(include_dcdc=True), *devices).current == pytest.approx(18.0)


# ----- selecting shunts ----------------------------------------------------------------------


def test_shunts_by_instance_name_or_service_and_only_those() -> None:
    devices = (mppt(10.0), shunt(-1.0, 279, "House", "ttyS6"), shunt(-2.0, 280, "Boat", "ttyS7"),
               dcload(3.0, 290, "Fridge", "ttyS8"))
    assert measure(source(), *devices).current == pytest.approx(10.0)            # empty list: none
    assert measure(source(shunts=[280]), *devices).current == pytest.approx(8.0)
    assert measure(source(shunts=["House"]), *devices).current == pytest.approx(9.0)
    by_service = source(shunts=["com.victronenergy.dcload.ttyS8"])
    assert measure(by_service, *devices).current == pytest.approx(7.0)
    assert measure(source(all_shunts=True), *devices).current == pytest.approx(10.0 - 1.0 - 2.0 - 3.0)


def test_packs_and_the_aggregate_are_never_shunts() -> None:
    aggregate = reading(AGGREGATE, Dc__0__Current=-9.0, DeviceInstance=279, CustomName="",
                        ProductName="aggbatt SmartShunt-like")
    devices = (mppt(10.0), pack(-4.0, instance=279), aggregate,
               pack(-4.0, "ttyUSB1", 2))
    assert measure(source(all_shunts=True), *devices).current == pytest.approx(10.0)
    result = measure(source(shunts=[279]), *devices)        # only a pack and the aggregate carry 279
    assert result.source == "bms" and "configured shunt DeviceInstance 279 not found" in result.problems


def test_all_shunts_takes_battery_services_that_name_a_shunt() -> None:
    devices = (mppt(10.0), shunt(-1.0, product="BMV-712 Smart", suffix="ttyS1"),
               shunt(-8.0, product="SmartShunt with limits", suffix="ttyS4", instance=302,
                     Info__MaxChargeCurrent=None),
               shunt(-2.0, product="Lynx Shunt VE.Can", suffix="ttyS2", instance=300),
               shunt(-4.0, product="Some meter", suffix="ttyS3", instance=301))
    assert measure(source(all_shunts=True), *devices).current == pytest.approx(10.0 - 1.0 - 2.0)


def test_a_configured_shunt_that_never_appears_is_reported_after_the_start() -> None:
    src = source(shunts=[279, "Garage"])
    events: list[Event] = []
    for t in range(0, 30):
        result = src.update(float(t), [mppt(10.0), shunt(-1.0, 279)], -7.0, 52.0)
        events += result.events
        assert result.source == "bms" and result.current == -7.0
        assert result.block is False
    assert len(events) == 1 and isinstance(events[0], VictronCurrentLost)
    assert "configured shunt 'Garage' not found" in events[0].problems
    assert src.missing_shunts == ("'Garage'",)
    status = src.status()
    assert status["missing_shunts"] == ["'Garage'"] and status["source"] == "bms"
    assert any("Garage" in p for p in status["problems"])


def test_no_warning_while_devices_are_still_appearing() -> None:
    src = source(shunts=[279])
    early = src.update(0.0, [mppt(10.0)], -7.0, 52.0)
    assert early.source == "bms" and early.events == ()
    later = src.update(2.0, [mppt(10.0), shunt(-1.0, 279)], -7.0, 52.0)
    assert later.source == "victron" and later.current == pytest.approx(9.0) and later.events == ()


def test_a_shunt_with_none_current_falls_back() -> None:
    result = measure(source(shunts=[279]), mppt(10.0), shunt(None, 279, "House"))
    assert result.source == "bms" and result.current == -7.0
    assert result.problems == ("com.victronenergy.battery.ttyS6 (House): /Dc/0/Current is None",)


def test_nothing_to_measure_falls_back() -> None:
    result = measure(source(), pack(5.0))
    assert result.source == "bms" and "no Multi, solar charger or shunt found" in result.problems


# ----- loss and recovery ---------------------------------------------------------------------


def test_a_source_vanishing_mid_run_and_returning() -> None:
    src = source()
    timeline: list[tuple[str, float | None, tuple[Event, ...]]] = []
    for t in range(0, 60):
        now = float(t)
        devices = [multi(-10.0, last_change=now), mppt(25.0, last_change=now)]
        if 20 <= t < 40:
            devices = devices[:1]                       # the MPPT's service is gone
        result = src.update(now, devices, -7.0, 52.0)
        timeline.append((result.source, result.current, result.events))
    assert all(s == "victron" and c == pytest.approx(15.0) for s, c, _ in timeline[:20])
    assert all(s == "bms" and c == -7.0 for s, c, _ in timeline[20:40])
    assert all(s == "victron" and c == pytest.approx(15.0) for s, c, _ in timeline[40:])
    events = [e for _, _, ev in timeline for e in ev]
    assert events == [
        VictronCurrentLost(("com.victronenergy.solarcharger.ttyS5 vanished",), blocked=False),
        VictronCurrentBack(("com.victronenergy.solarcharger.ttyS5",
                            "com.victronenergy.vebus.ttyS4")),
    ]


def test_a_steady_reading_is_not_stale() -> None:
    src = source(shunts=[290])
    for t in range(0, 600, 7):                          # nothing changed since the start
        devices = [multi(-10.0, last_change=0.0), mppt(20.0, last_change=0.0),
                   dcload(6.0, 290, last_change=0.0)]
        result = src.update(float(t), devices, -7.0, 52.0)
        assert result.source == "victron" and result.current == pytest.approx(4.0), t
        assert result.events == () and result.problems == ()


@pytest.mark.parametrize("connected", [0, None, "x"])
def test_a_charger_or_shunt_losing_its_device_link_is_dropped_at_once(connected) -> None:
    src = source(shunts=[290])
    src.update(0.0, [multi(-10.0), mppt(20.0), dcload(6.0, 290)], -7.0, 52.0)
    timeline = []
    for t in range(20, 40):
        link = connected if 25 <= t < 30 else 1
        devices = [multi(-10.0), mppt(20.0, Connected=link), dcload(6.0, 290)]
        timeline.append(src.update(float(t), devices, -7.0, 52.0))
    assert [r.source for r in timeline] == ["victron"] * 5 + ["bms"] * 5 + ["victron"] * 10
    assert timeline[5].problems == (
        f"com.victronenergy.solarcharger.ttyS5: /Connected is {connected!r} (device link lost)",)
    events = [e for r in timeline for e in r.events]
    assert [type(e) for e in events] == [VictronCurrentLost, VictronCurrentBack]
    assert events[0].problems == timeline[5].problems
    shunt_down = src.update(40.0, [multi(-10.0), mppt(20.0), dcload(6.0, 290, Connected=0)],
                            -7.0, 52.0)
    assert shunt_down.source == "bms"


def test_block_policy() -> None:
    src = source(block_on_loss=True)
    starting = src.update(0.0, [multi(None)], -7.0, 52.0)
    assert starting.source == "bms" and not starting.block      # devices may still be appearing
    result = src.update(LATER, [multi(None)], -7.0, 52.0)
    assert result.block and result.current == -7.0
    assert result.events == (VictronCurrentLost(result.problems, blocked=True),)
    assert not src.update(LATER + 1, [multi(-3.0)], -7.0, 52.0).block


# ----- bad input never raises ----------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=5), st.lists(st.integers(), max_size=2))
services = st.sampled_from([
    "com.victronenergy.vebus.ttyS4", "com.victronenergy.solarcharger.ttyS5",
    "com.victronenergy.battery.ttyS6", "com.victronenergy.dcload.ttyS7",
    "com.victronenergy.dcdc.ttyS8", AGGREGATE, "com.victronenergy.battery.ttyUSB0",
])
paths = st.sampled_from(["/Dc/0/Current", "/Connected", "/DeviceInstance", "/CustomName", "/ProductName",
                         "/Info/MaxChargeVoltage"])
a_reading = st.builds(lambda s, v, t: ServiceReading(s, v, t, 0.0), services,
                      st.dictionaries(paths, junk, max_size=6), st.floats(-1e3, 1e3))


@settings(max_examples=200, deadline=None)
@given(rounds=st.lists(st.tuples(st.floats(0, 200), st.lists(a_reading, max_size=6), junk, junk),
                      max_size=8),
       shunts=st.lists(st.one_of(st.integers(0, 300), st.text(max_size=4)), max_size=3),
       alone=st.booleans(), everything=st.booleans())
def test_garbage_never_raises_and_the_current_is_a_number_or_the_bms_value(rounds, shunts, alone,
                                                                           everything) -> None:
    src = source(shunts=shunts, shunt_alone=alone, all_shunts=everything)
    for now, readings, bms, voltage in rounds:
        result = src.update(now, readings, bms, voltage)
        if result.source == "victron":
            assert isinstance(result.current, float) and math.isfinite(result.current)
        else:
            assert result.problems
            assert result.current is None or math.isfinite(result.current)


# ----- as the engine calls it ----------------------------------------------------------------


class _Cfg:
    class current:
        shunts = [279]
        all_shunts = False
        shunt_alone = False
        dcload_sign = -1
        include_dcdc = False
        stale_after = 10.0
        on_source_lost = "fallback"

    class service:
        name = AGGREGATE

    class freshness:
        idle_current = 2.0


def test_measure_uses_the_pack_voltage_and_falls_back_to_the_bms_sum() -> None:
    src = VictronDevices.from_config(_Cfg)
    packs = (snapshot("a", service="x", voltage=52.0, current=-3.0, power=-156.0),
             snapshot("b", service="y", voltage=54.0, current=-4.0, power=-216.0))

    def ctx(now: float, *services: ServiceReading) -> TickContext:
        return tick_context(packs, now=now, config=_Cfg, services=services)

    ok = src.measure(ctx(0.0, multi(-20.0), mppt(8.0), shunt(-1.0, 279)))
    assert ok.source == "victron_devices"
    assert ok.current == pytest.approx(-13.0) and ok.power == pytest.approx(53.0 * -13.0)
    lost = src.measure(ctx(LATER, multi(-20.0), mppt(8.0)))
    assert lost.source.startswith("bms_sum") and lost.current == pytest.approx(-7.0)
    assert lost.power == pytest.approx(-372.0)
    assert isinstance(lost.events[0], VictronCurrentLost)
    assert "configured shunt DeviceInstance 279 not found" in lost.events[0].problems


def test_the_engine_keeps_a_steady_victron_current_and_drops_a_vanished_device_at_once() -> None:
    engine = Engine(config_from_dict({"current": {"source": "victron_devices", "shunts": [290]}}))
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=-3.0)
    bank.add("ttyUSB1", 0.0, "B", current=-4.0)
    devices = (mppt(30.0, last_change=0.0, Connected=1), dcload(6.0, 290, last_change=0.0, Connected=1))
    for device in devices:                  # on the bus since the start, never a changed value
        bank.services[device.service] = [dict(device.values), 0.0, 0.0]
    results = run(engine, bank, 0.0, 300.0, step=1.0, moving=("ttyUSB0", "ttyUSB1"))
    assert all(r.values["/Dc/0/Current"] == pytest.approx(24.0) for r in results)
    assert not [e for r in results for e in r.events
                if isinstance(e, (VictronCurrentLost, VictronCurrentBack))]
    del bank.services[devices[1].service]
    gone = run(engine, bank, 301.0, 301.0, moving=("ttyUSB0", "ttyUSB1"))[0]
    assert gone.values["/Dc/0/Current"] == pytest.approx(-7.0)
    assert [str(e) for e in gone.events if isinstance(e, VictronCurrentLost)] == [
        "bank current from Victron devices lost: configured shunt DeviceInstance 290 not found; "
        "com.victronenergy.dcload.ttyS7 vanished; using the sum of the BMS currents"]
