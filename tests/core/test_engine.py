"""engine.py: whole ticks from raw readings, with a fake monotonic clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from aggbatt.config import default_config
from aggbatt.core.engine import DYNAMIC_PATHS, Engine, TickResult
from aggbatt.core.events import (
    Event,
    KnownPacksForgotten,
    LimitSourceChanged,
    PackHolds,
    PackIdChanged,
    PackIdFlapping,
    PackIdShared,
    PackOnline,
    PackWentOffline,
    StrategyNote,
    TickFailed,
    TicksRecovered,
    ValueIgnored,
)
from aggbatt.core.pack_paths import SAFETY_PATHS
from aggbatt.core.snapshot import ServiceReading
from aggbatt.core.strategies import ChargeLimits, CurrentResult, Strategies, TickContext
from aggbatt.core.strategies.current import BmsSum
from aggbatt.core.strategies.soc import BmsAverage
from aggbatt.core.validation import PACK_PATHS
from tests.factories import SB, Bank, pack_values
from tests.factories import config as cfg


def tick(engine: Engine, bank: Bank, now: float) -> TickResult:
    return engine.tick(now, bank.readings())


def status(result: TickResult, pack_id: str) -> Any:
    return next(p for p in result.packs if p.id == pack_id)


# ---- steady state -------------------------------------------------------------------------------


def test_three_unequal_packs() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=10.0, capacity=100.0, soc=40.0)
    bank.add("ttyUSB1", 0.0, "B", current=20.0, capacity=200.0, soc=60.0, voltage=53.4)
    bank.add("ttyUSB2", 0.0, "C", current=10.0, capacity=100.0, soc=80.0, voltage=53.0)
    engine = Engine(default_config())
    result = tick(engine, bank, 1.0)
    v = result.values
    assert set(DYNAMIC_PATHS) <= set(v)
    assert v["/Dc/0/Voltage"] == pytest.approx((53.2 + 53.4 + 53.0) / 3)
    assert v["/Dc/0/Current"] == pytest.approx(40.0)
    # no /Dc/0/Power published by the packs: each contributes V x I = 532 + 1068 + 530 = 2130 W
    assert v["/Dc/0/Power"] == pytest.approx(53.2 * 10 + 53.4 * 20 + 53.0 * 10)
    # SoC (40 x 100 + 60 x 200 + 80 x 100) / 400 = 24000 / 400 = 60 %
    assert v["/Soc"] == pytest.approx(60.0)
    assert v["/InstalledCapacity"] == 400.0
    # shares 0.25 / 0.5 / 0.25 (measured = capacity); CCL = min(400, 200, 400) = 200 A
    assert v["/Info/MaxChargeCurrent"] == pytest.approx(200.0)
    assert v["/Info/MaxChargeVoltage"] == 55.2
    assert v["/System/NrOfModulesOnline"] == 3 and v["/System/NrOfModulesOffline"] == 0
    assert v["/Alarms/BmsCable"] == 0 and v["/Alarms/InternalFailure"] == 0
    assert v["/TimeToGo"] is None                       # charging
    assert result.known_packs == frozenset({"A", "B", "C"})
    assert [p.id for p in result.packs] == ["A", "B", "C"] and all(p.online for p in result.packs)
    assert PackOnline("Pack A", SB + "ttyUSB0") in result.events
    assert LimitSourceChanged("charge", "Pack B CCL 100 A at 50% share") in result.events
    # the wording of the lines a user greps the log for
    lines = [str(e) for e in result.events]
    assert "Pack A: online (com.victronenergy.battery.ttyUSB0)" in lines
    assert "charge limit now set by: Pack B CCL 100 A at 50% share" in lines


def test_no_events_in_steady_state() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=5.0)
    bank.add("ttyUSB1", 0.0, "B", current=5.0)
    engine = Engine(default_config())
    assert tick(engine, bank, 0.0).events
    for second in range(1, 30):
        bank.update("ttyUSB0", second, current=5.0 + second % 3, voltage=53.2 + second / 100)
        bank.update("ttyUSB1", second, current=5.0 - second % 2, voltage=53.2 + second / 100)
        assert tick(engine, bank, float(second)).events == []


def test_time_to_go_while_discharging() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=-10.0, capacity=100.0, soc=50.0, **{"/Capacity": 50.0})
    bank.add("ttyUSB1", 0.0, "B", current=-10.0, capacity=100.0, soc=70.0, **{"/Capacity": 70.0})
    v = tick(Engine(default_config()), bank, 0.0).values
    # (50 + 70) Ah left at 20 A = 6 h = 21600 s
    assert v["/TimeToGo"] == 21600
    assert v["/Capacity"] == 120.0


# ---- freshness ----------------------------------------------------------------------------------


def charging_bank() -> Bank:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=20.0)
    bank.add("ttyUSB1", 0.0, "B", current=20.0)
    return bank


def run(engine: Engine, bank: Bank, start: float, stop: float, step: float = 0.5,
        moving: tuple[str, ...] = ("ttyUSB1",)) -> list[TickResult]:
    """Ticks from start to stop; the `moving` services publish a changed voltage every tick."""
    out = []
    t = start
    while t <= stop + 1e-9:
        for service in moving:
            bank.update(service, t, voltage=53.0 + (t % 7) / 100)
        out.append(tick(engine, bank, t))
        t += step
    return out


def test_frozen_pack_goes_offline_after_stale_after_while_current_flows() -> None:
    bank = charging_bank()
    engine = Engine(default_config())          # stale_after 10 s, idle 120 s, idle_current 2 A
    results = run(engine, bank, 0.0, 10.0)     # A never changes after t = 0
    assert status(results[-1], "A").online     # age 10.0 s: not older than the limit yet
    result = run(engine, bank, 10.5, 10.5)[0]
    a = status(result, "A")
    assert not a.online and a.state == "offline"
    assert PackWentOffline("Pack A", "no value changed for 10.5 s while it reports 20.0 A "
                                     "(limit 10 s)") in result.events
    v = result.values
    assert v["/System/NrOfModulesOnline"] == 1 and v["/System/NrOfModulesOffline"] == 1
    assert v["/Alarms/BmsCable"] == 1
    assert v["/Dc/0/Current"] == 20.0           # the offline pack left the sum
    assert v["/Info/MaxChargeCurrent"] == pytest.approx(100.0)   # B alone: share 1


def test_quiet_pack_at_rest_does_not_flap() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=0.0)
    bank.add("ttyUSB1", 0.0, "B", current=0.3)
    engine = Engine(default_config())
    results = run(engine, bank, 0.0, 900.0, step=5.0)
    assert all(status(r, "A").online for r in results)        # silence at rest proves nothing
    assert all(r.events == [] for r in results[1:])


def test_a_quiet_pack_at_zero_amps_goes_stale_when_the_bank_current_passes_it_by() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=0.0)
    bank.add("ttyUSB1", 0.0, "B", current=0.0)
    engine = Engine(default_config())                         # stale_after 10 s, idle_current 2 A
    run(engine, bank, 0.0, 300.0, step=5.0)                   # at rest: A quiet for 300 s, online
    bank.update("ttyUSB1", 300.5, current=25.0)                # the bank starts charging (B sees it)
    results = run(engine, bank, 300.5, 311.0)
    assert all(status(r, "A").online for r in results)        # a live pack has 10 s to show it
    result = run(engine, bank, 311.5, 311.5)[0]
    assert not status(result, "A").online
    assert any(e.pack == "Pack A" and e.reason is not None
               and e.reason.startswith("no value changed for 311.5 s while the bank carried 25.0 A "
                                       "charging, which it does not block")
               for e in result.events if isinstance(e, PackWentOffline))
    bank.update("ttyUSB1", 312.0, current=0.0)                 # rest again: A stays stale until
    assert not status(run(engine, bank, 312.0, 400.0)[-1], "A").online   # a value of it changes


def test_a_pack_that_blocks_charging_is_quiet_by_nature_while_the_bank_charges() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=0.0, ccl=0.0, allow_charge=0)
    bank.add("ttyUSB1", 0.0, "B", current=40.0)
    engine = Engine(default_config())
    results = run(engine, bank, 0.0, 600.0, step=5.0)
    assert all(status(r, "A").online for r in results)
    assert all(r.values["/Info/MaxChargeCurrent"] == 0.0 for r in results)


def test_a_quiet_pack_whose_driver_does_not_answer_a_probe_is_stale() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=0.0)
    bank.add("ttyUSB1", 0.0, "B", current=0.0)
    engine = Engine(default_config())
    run(engine, bank, 0.0, 200.0, step=10.0)
    hung = [replace(r, unresponsive=True) if r.service.endswith("ttyUSB0") else r
            for r in bank.readings()]
    result = engine.tick(201.0, hung)
    assert not status(result, "A").online and status(result, "B").online
    assert PackWentOffline("Pack A", "no value changed for 201.0 s and its driver did not answer "
                                     "a probe") in result.events


def test_a_pack_without_a_current_reading_for_minutes_while_the_bank_charges() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    run(engine, bank, 0.0, 5.0, moving=("ttyUSB0", "ttyUSB1"))
    bank.update("ttyUSB0", 5.5, voltage=None, current=None, online=0)   # serialbattery link loss
    results = run(engine, bank, 5.5, 300.0, step=5.0)
    assert all(status(r, "A").reason == "BMS reports its link lost (NrOfModulesOnline 0)"
               for r in results)


def test_staleness_judges_by_the_configured_current_source() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=0.0)
    bank.add("ttyUSB1", 0.0, "B", current=0.0)
    multi = "com.victronenergy.vebus.ttyS4"
    engine = Engine(cfg(current={"source": "victron_devices"}))
    results = []
    for second in range(0, 30):
        # the Multi charges the bank with 100 A while both packs stay frozen at 0 A
        bank.services[multi] = [{"/Connected": 1, "/Dc/0/Current": 100.0 + second % 2},
                                float(second), 0.0]
        results.append(tick(engine, bank, float(second)))
    assert results[5].values["/Dc/0/Current"] == pytest.approx(100.0, abs=1.0)
    assert status(results[10], "A").online
    assert not status(results[-1], "A").online and not status(results[-1], "B").online
    assert "100.0 A charging" in (status(results[-1], "A").reason or "")


# ---- a block or a limit is never released by losing a pack ---------------------------------------


def blocked_bank() -> Bank:
    """A blocks charging (its FET is open: 0 A); B takes the charge current."""
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=0.0, ccl=0.0, allow_charge=0)
    bank.add("ttyUSB1", 0.0, "B", current=40.0)
    return bank


@pytest.mark.parametrize("fault", ["vanish", "link_loss", "invalid_limits"])
def test_a_block_holds_while_the_blocking_pack_is_offline(fault: str) -> None:
    bank = blocked_bank()
    engine = Engine(default_config())
    assert tick(engine, bank, 0.0).values["/Info/MaxChargeCurrent"] == 0.0
    if fault == "vanish":
        bank.remove("ttyUSB0")
    elif fault == "link_loss":
        bank.update("ttyUSB0", 1.0, voltage=None, current=None, online=0, ccl=None)
    else:
        bank.update("ttyUSB0", 1.0, ccl=None, allow_charge=None, **{"/Io/AllowToCharge": None})
    results = run(engine, bank, 1.0, 600.0, step=5.0)
    assert all(not status(r, "A").online for r in results)
    assert all(r.values["/Info/MaxChargeCurrent"] == 0.0 for r in results)
    assert all(r.values["/Io/AllowToCharge"] == 0 for r in results)
    assert all(r.values["/System/NrOfModulesBlockingCharge"] == 1 for r in results)
    assert "A blocks charging" in results[-1].values["/Info/ChargeLimitation"]
    a = status(results[-1], "A")
    assert a.holds is not None and "CCL 0" in a.holds
    assert sum(isinstance(e, PackHolds) and e.pack == "Pack A"
               for r in results for e in r.events) == 1


def test_saved_blocks_are_restored_for_known_packs_until_fresh_data_lifts_them() -> None:
    bank = blocked_bank()
    first = Engine(default_config())
    saved = tick(first, bank, 0.0).blocks
    assert saved == {"A": ("charge",)}
    bank.remove("ttyUSB0")                                 # A is missing after a restart
    engine = Engine(default_config(), known_packs=["A", "B"], blocks=dict(saved or {}))
    result = tick(engine, bank, 0.0)
    assert result.values["/Info/MaxChargeCurrent"] == 0.0
    assert result.blocks == {"A": ("charge",)}
    bank.add("ttyUSB0", 1.0, "A", current=0.0)              # back, not blocking
    assert tick(engine, bank, 1.0).values["/Info/MaxChargeCurrent"] == pytest.approx(100.0)
    garbage = Engine(default_config(), known_packs=["A"], blocks={"A": "charge", "Z": ["charge"]})
    assert tick(garbage, Bank(), 0.0).blocks == {}         # a garbage entry, an unknown pack


def test_fresh_data_from_the_blocking_pack_lifts_its_block() -> None:
    bank = blocked_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    values_a = bank.services[SB + "ttyUSB0"][0]
    bank.remove("ttyUSB0")
    assert tick(engine, bank, 1.0).values["/Info/MaxChargeCurrent"] == 0.0
    bank.services[SB + "ttyUSB0"] = [dict(values_a, **{"/Info/MaxChargeCurrent": 100.0,
                                                        "/Io/AllowToCharge": 1}), 2.0, 2.0]
    result = tick(engine, bank, 2.0)
    assert status(result, "A").state == "readmitting"
    # unblocked, but while it is readmitted its fresh limit still counts: 100 A at 50 % share
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(100.0)


def test_forgetting_the_blocking_pack_releases_its_block() -> None:
    bank = blocked_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    bank.remove("ttyUSB0")
    assert tick(engine, bank, 1.0).values["/Info/MaxChargeCurrent"] == 0.0
    assert engine.forget_missing() == ["Pack A"]
    assert tick(engine, bank, 2.0).values["/Info/MaxChargeCurrent"] == pytest.approx(100.0)


def test_a_readmitting_pack_whose_fresh_data_blocks_counts_at_once() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    values_a = bank.services[SB + "ttyUSB0"][0]
    bank.remove("ttyUSB0")
    tick(engine, bank, 1.0)
    bank.services[SB + "ttyUSB0"] = [dict(values_a, **{"/Info/MaxDischargeCurrent": 0.0,
                                                        "/Io/AllowToDischarge": 0}), 2.0, 2.0]
    result = tick(engine, bank, 2.0)
    assert status(result, "A").state == "readmitting"
    assert result.values["/Info/MaxDischargeCurrent"] == 0.0
    assert result.values["/Io/AllowToDischarge"] == 0


def test_a_present_stale_pack_whose_data_blocks_counts_at_once() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    run(engine, bank, 0.0, 10.5)                       # A frozen at 20 A: stale
    bank.services[SB + "ttyUSB0"][0]["/Io/AllowToDischarge"] = 0   # no change stamp: still stale
    result = tick(engine, bank, 11.0)
    assert not status(result, "A").online
    assert result.values["/Info/MaxDischargeCurrent"] == 0.0


def test_going_offline_never_raises_a_limit() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=10.0, cvl=54.0, dcl=20.0, ccl=30.0)
    bank.add("ttyUSB1", 0.0, "B", current=10.0)
    engine = Engine(default_config())
    before = tick(engine, bank, 0.0).values
    assert before["/Info/MaxChargeVoltage"] == 54.0
    bank.update("ttyUSB0", 1.0, voltage=None, current=None, online=0)
    after = tick(engine, bank, 1.0).values
    for path in ("/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent"):
        assert after[path] <= before[path], path
    assert after["/Info/MaxChargeVoltage"] == 54.0


def test_what_an_unhealthy_pack_showed_still_counts_after_it_leaves() -> None:
    # A goes offline (invalid voltage), then shows a block and a lower CVL while offline, then
    # leaves the bus: what it showed last is the newest information and keeps counting.
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=10.0, cvl=55.2)
    bank.add("ttyUSB1", 0.0, "B", current=10.0)
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    bank.update("ttyUSB0", 1.0, voltage=None)
    tick(engine, bank, 1.0)
    bank.update("ttyUSB0", 2.0, allow_charge=0, cvl=54.0)
    shown = tick(engine, bank, 2.0).values
    assert (shown["/Info/MaxChargeCurrent"], shown["/Info/MaxChargeVoltage"]) == (0.0, 54.0)
    bank.remove("ttyUSB0")
    gone = tick(engine, bank, 3.0).values
    assert (gone["/Info/MaxChargeCurrent"], gone["/Info/MaxChargeVoltage"]) == (0.0, 54.0)


def test_a_block_flag_that_turns_invalid_does_not_lift_the_block() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=10.0, allow_charge=0)
    bank.add("ttyUSB1", 0.0, "B", current=10.0)
    engine = Engine(default_config())
    assert tick(engine, bank, 0.0).values["/Info/MaxChargeCurrent"] == 0.0
    for step, garbage in enumerate((None, "x", float("nan")), 1):
        bank.update("ttyUSB0", float(step), allow_charge=garbage)
        result = tick(engine, bank, float(step))
        assert status(result, "A").online
        assert result.values["/Info/MaxChargeCurrent"] == 0.0, garbage
    bank.update("ttyUSB0", 5.0, allow_charge=1)                     # a valid value lifts it
    assert tick(engine, bank, 5.0).values["/Info/MaxChargeCurrent"] == pytest.approx(200.0)


def test_a_pack_frozen_at_a_restart_keeps_capping_after_it_leaves() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=10.0, cvl=54.0, ccl=30.0)
    bank.add("ttyUSB1", 0.0, "B", current=10.0)
    engine = Engine(default_config(), known_packs=["A", "B"])
    bank.update("ttyUSB1", 20.0, current=10.5)       # A frozen at 10 A for 20 s: stale at once
    first = tick(engine, bank, 20.0)
    assert not status(first, "A").online
    assert first.values["/Info/MaxChargeVoltage"] == 54.0
    bank.remove("ttyUSB0")
    gone = tick(engine, bank, 21.0).values
    assert gone["/Info/MaxChargeVoltage"] == 54.0
    assert gone["/Info/MaxChargeCurrent"] <= first.values["/Info/MaxChargeCurrent"]


def test_under_own_charge_control_a_pack_going_offline_keeps_capping_the_cvl_by_its_cells() -> None:
    bank = Bank()
    # a 15S pack whose BMS allows 3.6 V per cell, next to a 16S pack
    bank.add("ttyUSB0", 0.0, "A", current=10.0, voltage=50.0, cvl=54.0,
             **{"/System/NrOfCellsPerBattery": 15})
    bank.add("ttyUSB1", 0.0, "B", current=10.0, **{"/System/NrOfCellsPerBattery": 16})
    engine = Engine(cfg(charge={"strategy": "own", "own": {"max_cell_voltage": 3.45}}))
    noon = datetime(2025, 6, 1, 12, 0)
    before = engine.tick(0.0, bank.readings(), wall=noon).values["/Info/MaxChargeVoltage"]
    assert before <= 15 * 3.45 + 1e-9
    bank.update("ttyUSB0", 1.0, voltage=None, current=None, online=0)
    after = engine.tick(1.0, bank.readings(), wall=noon).values["/Info/MaxChargeVoltage"]
    assert after <= 15 * 3.45 + 1e-9


def test_a_block_follows_a_pack_renamed_while_it_is_offline() -> None:
    bank = blocked_bank()
    bank.update("ttyUSB0", 0.0, serial="", name="Left")      # no serial: known by its name
    engine = Engine(default_config())
    assert tick(engine, bank, 0.0).values["/Info/MaxChargeCurrent"] == 0.0
    # its link is lost (limits and flags invalid too), then it is renamed in the GUI
    bank.update("ttyUSB0", 1.0, voltage=None, current=None, online=0, ccl=None, allow_charge=None)
    bank.update("ttyUSB0", 1.0, name="Right")
    results = run(engine, bank, 1.0, 20.0)
    assert any(isinstance(e, PackIdChanged) and e.reported == "Right"
               for r in results for e in r.events)
    assert all(r.values["/Info/MaxChargeCurrent"] == 0.0 for r in results)


def test_readmission_needs_readmit_after_seconds_of_fresh_data() -> None:
    bank = charging_bank()
    engine = Engine(default_config())          # readmit_after 5 s
    run(engine, bank, 0.0, 10.5)
    results = run(engine, bank, 11.0, 15.5, moving=("ttyUSB0", "ttyUSB1"))   # A fresh from t = 11
    assert all(not status(r, "A").online for r in results)
    assert status(results[0], "A").state == "readmitting"
    assert all(r.events == [] for r in results)
    result = run(engine, bank, 16.0, 16.0, moving=("ttyUSB0", "ttyUSB1"))[0]   # 16 - 11 = 5 s
    assert status(result, "A").online
    assert "Pack A: back online after 5 s of valid data (com.victronenergy.battery.ttyUSB0)" in [
        str(e) for e in result.events]
    assert result.values["/Alarms/BmsCable"] == 0
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(200.0)


def test_pack_vanishing_and_returning_under_a_new_service_name() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    values_a = bank.services[SB + "ttyUSB0"][0]
    bank.remove("ttyUSB0")
    result = tick(engine, bank, 1.0)
    assert PackWentOffline("Pack A", "service gone") in result.events
    assert status(result, "A").service is None and status(result, "A").reason == "service gone"
    assert result.values["/System/NrOfModulesOffline"] == 1
    bank.services[SB + "ttyUSB7"] = [dict(values_a), 2.0, 2.0]      # the driver restarted
    result = tick(engine, bank, 2.0)
    assert status(result, "A").state == "readmitting"
    assert result.known_packs == frozenset({"A", "B"})
    bank.update("ttyUSB7", 7.0, voltage=53.3)
    result = tick(engine, bank, 7.0)                                 # 7 - 2 = 5 s of fresh data
    a = status(result, "A")
    assert a.online and a.service == SB + "ttyUSB7"
    assert result.known_packs == frozenset({"A", "B"})


def test_link_loss_reported_by_the_pack() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    # serialbattery after 10 s without BMS answers: V, I invalid, NrOfModulesOnline 0, old limits kept
    bank.update("ttyUSB0", 1.0, voltage=None, current=None, online=0)
    result = tick(engine, bank, 1.0)
    assert PackWentOffline("Pack A", "BMS reports its link lost (NrOfModulesOnline 0)") \
        in result.events
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(100.0)   # from B alone


@pytest.mark.parametrize(("key", "label"), [
    ("voltage", "/Dc/0/Voltage"), ("current", "/Dc/0/Current"), ("cvl", "CVL"), ("ccl", "CCL"),
    ("dcl", "DCL"),
])
def test_invalid_voltage_current_or_limits_take_a_pack_offline(key: str, label: str) -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    bank.update("ttyUSB0", 1.0, **{key: None})
    result = tick(engine, bank, 1.0)
    a = status(result, "A")
    assert not a.online and a.reason is not None and label in a.reason
    assert result.values["/System/NrOfModulesOnline"] == 1


def test_known_pack_missing_at_start() -> None:
    bank = charging_bank()
    engine = Engine(default_config(), known_packs=["A", "B", "C"])
    result = tick(engine, bank, 0.0)
    assert "Pack C" not in " ".join(map(str, result.events))  # never seen: named by its id
    assert PackWentOffline("C", "known pack not present") in result.events
    assert result.values["/System/NrOfModulesOffline"] == 1
    assert result.values["/Alarms/BmsCable"] == 1
    assert result.known_packs == frozenset({"A", "B", "C"})
    # degrade (default): limits from A and B; shares 0.5 each: 100 / 0.5 = 200 A
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(200.0)


def test_expected_packs_alarm() -> None:
    bank = charging_bank()
    result = tick(Engine(cfg(discovery={"expected_packs": 3})), bank, 0.0)
    assert result.values["/Alarms/BmsCable"] == 1
    assert result.values["/System/NrOfModulesOffline"] == 0
    result = tick(Engine(cfg(discovery={"expected_packs": 2})), bank, 0.0)
    assert result.values["/Alarms/BmsCable"] == 0


def test_no_pack_online() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    bank.remove("ttyUSB0")
    bank.remove("ttyUSB1")
    result = tick(engine, bank, 1.0)
    v = result.values
    for path in ("/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent", "/Info/MaxDischargeCurrent",
                 "/Info/BatteryLowVoltage", "/Dc/0/Voltage", "/Dc/0/Current", "/Soc"):
        assert v[path] is None, path
    assert v["/Alarms/BmsCable"] == 2
    assert v["/Info/ChargeLimitation"] == "no pack online"
    assert v["/System/NrOfModulesOffline"] == 2
    assert LimitSourceChanged("charge", "no pack online") in result.events


def test_on_pack_lost_block_charge() -> None:
    bank = charging_bank()
    engine = Engine(cfg(freshness={"on_pack_lost": "block_charge", "readmit_after": 0.0}))
    tick(engine, bank, 0.0)
    bank.update("ttyUSB0", 1.0, ccl=None)
    result = tick(engine, bank, 1.0)
    assert result.values["/Info/MaxChargeCurrent"] == 0.0
    assert result.values["/Info/MaxDischargeCurrent"] == pytest.approx(100.0)
    assert result.values["/Info/ChargeLimitation"] == "Pack A offline, on_pack_lost = block_charge"
    assert LimitSourceChanged("charge", "Pack A offline, on_pack_lost = block_charge") \
        in result.events
    bank.update("ttyUSB0", 2.0, ccl=100.0)
    result = tick(engine, bank, 2.0)
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(200.0)


def test_renaming_a_pack_without_serial_leaves_no_ghost() -> None:
    bank = charging_bank()
    bank.update("ttyUSB0", 0.0, serial="", name="Left")
    engine = Engine(cfg(freshness={"on_pack_lost": "block_charge"}))
    assert tick(engine, bank, 0.0).known_packs == frozenset({"Left", "B"})
    bank.update("ttyUSB0", 1.0, name="Right")                    # the user renames it in the GUI
    results = run(engine, bank, 1.0, 10.0, moving=("ttyUSB0", "ttyUSB1"))
    assert all(r.values["/System/NrOfModulesOffline"] == 0 for r in results)
    assert all(r.values["/Info/MaxChargeCurrent"] == pytest.approx(200.0) for r in results)
    last = results[-1]
    assert last.known_packs == frozenset({"Right", "B"})
    assert status(last, "Right").online and status(last, "Right").service == SB + "ttyUSB0"
    assert last.values["/Alarms/BmsCable"] == 0
    # after a restart the persisted ids name the pack as it is now: still no ghost
    restarted = Engine(cfg(freshness={"on_pack_lost": "block_charge"}),
                       known_packs=last.known_packs)
    result = tick(restarted, bank, 11.0)
    assert result.values["/System/NrOfModulesOffline"] == 0
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(200.0)


def test_a_serial_that_changes_every_tick_stays_one_pack() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    events: list[Event] = []
    for n in range(1, 26):
        bank.update("ttyUSB0", float(n), serial=f"A{n}", voltage=53.0 + n / 100)
        bank.update("ttyUSB1", float(n), voltage=53.0 + n / 100)
        result = tick(engine, bank, float(n))
        events += result.events
        assert result.known_packs == frozenset({"A", "B"})
        assert result.values["/System/NrOfModulesOffline"] == 0
        assert result.values["/Alarms/BmsCable"] == 0
    assert len([e for e in events if isinstance(e, PackIdFlapping)]) == 1


def test_known_packs_are_bounded_and_the_longest_missing_go_first() -> None:
    from aggbatt.core.packs import MAX_KNOWN_PACKS

    bank = charging_bank()
    stale = [f"OLD{n:03d}" for n in range(MAX_KNOWN_PACKS + 10)]
    engine = Engine(default_config(), known_packs=stale)
    result = tick(engine, bank, 0.0)
    assert len(result.known_packs) == MAX_KNOWN_PACKS and {"A", "B"} <= result.known_packs
    forgot = [e for e in result.events if isinstance(e, KnownPacksForgotten)]
    assert len(forgot) == 1 and len(forgot[0].ids) == 12 and forgot[0].limit == MAX_KNOWN_PACKS
    service = SB + "ttyUSB0"
    for n in range(1, 30):                     # a driver that returns under a new serial each time
        values = bank.services.pop(service)[0]
        values["/Serial"] = f"A{n}"
        service = SB + f"ttyACM{n}"
        bank.services[service] = [values, float(n), float(n)]
        result = tick(engine, bank, float(n))
        assert len(result.known_packs) == MAX_KNOWN_PACKS
        assert {f"A{n}", f"A{n - 1}" if n > 1 else "A", "B"} <= result.known_packs  # recent stay
    assert result.values["/System/NrOfModulesOffline"] >= MAX_KNOWN_PACKS - 2  # still count


def test_a_blocking_pack_blocks_the_bank_and_logs_once() -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    bank.update("ttyUSB1", 1.0, allow_charge=0)
    result = tick(engine, bank, 1.0)
    assert result.values["/Info/MaxChargeCurrent"] == 0.0
    assert result.values["/System/NrOfModulesBlockingCharge"] == 1
    why = "Pack B blocks charging (AllowToCharge 0)"
    assert result.events == [LimitSourceChanged("charge", why)]
    assert str(result.events[0]) == f"charge limit now set by: {why}"
    bank.update("ttyUSB1", 2.0, voltage=53.5)
    assert tick(engine, bank, 2.0).events == []


# ---- scale and bad input ------------------------------------------------------------------------


def test_sixteen_pack_bank() -> None:
    bank = Bank()
    for i in range(16):
        bank.add(f"ttyUSB{i}", 0.0, f"P{i:02d}", capacity=100.0 if i % 2 else 280.0, ccl=50.0,
                 voltage=53.0 + i / 100)
    result = tick(Engine(default_config()), bank, 0.0)
    v = result.values
    assert v["/System/NrOfModulesOnline"] == 16
    # 8 x 280 + 8 x 100 = 3040 Ah. At rest: capacity shares. A 280 Ah pack's share is 280/3040;
    # CCL = min(50 / (100/3040), 50 / (280/3040)) = 50 x 3040 / 280 = 542.857 A
    assert v["/InstalledCapacity"] == 3040.0
    assert v["/Info/MaxChargeCurrent"] == pytest.approx(50 * 3040 / 280)
    # voltage mean = 53.0 + (0 + 1 + ... + 15) / 100 / 16 = 53.0 + 1.2 / 16 = 53.075
    assert v["/Dc/0/Voltage"] == pytest.approx(53.075)


def test_absurd_values() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", voltage=1000.0)                    # 1000 V
    bank.add("ttyUSB1", 0.0, "B", capacity=-100.0, ccl=80.0)        # negative capacity
    bank.add("ttyUSB2", 0.0, "C", capacity=100.0, ccl=100.0)
    engine = Engine(default_config())
    result = tick(engine, bank, 0.0)
    assert ValueIgnored("Pack A", "/Dc/0/Voltage", "1000.0 is outside (0, 100]") in result.events
    assert "Pack B: ignoring /InstalledCapacity: -100.0 is outside [1, 100000]" in [
        str(e) for e in result.events]
    assert status(result, "A").reason == "no valid /Dc/0/Voltage"
    # B's capacity is unknown: share 1; C holds all known capacity: share 1.
    # CCL = min(80 / 1, 100 / 1) = 80 A
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(80.0)
    assert result.values["/InstalledCapacity"] == 100.0
    # Garbage is reported once per pack and path, not every tick.
    bank.update("ttyUSB1", 1.0, voltage=53.1)
    assert not any(isinstance(e, ValueIgnored) for e in tick(engine, bank, 1.0).events)


@pytest.mark.parametrize("garbage", [None, "", "53.2", [], [1, 2], {}, float("nan"), float("inf"),
                                     True, -1e300, object()])
@pytest.mark.parametrize("keep_identity", [True, False])
def test_garbage_on_every_path_never_raises(garbage: Any, keep_identity: bool) -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    for path in PACK_PATHS:
        if not (keep_identity and path in ("/ProductName", "/Serial")):
            bank.services[SB + "ttyUSB0"][0][path] = garbage
    result = tick(engine, bank, 1.0)
    # A is offline (invalid V, I and limits) or no longer a pack at all; B alone sets the limits.
    assert [p.id for p in result.packs if p.online] == ["B"]
    assert not status(result, "A").online
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(100.0)
    assert result.values["/System/NrOfModulesOffline"] == 1


def test_two_packs_with_the_same_serial() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "0000")
    bank.add("ttyUSB1", 0.0, "0000")
    result = tick(Engine(default_config(), known_packs=["0000"]), bank, 0.0)
    ids = {f"0000@{SB}ttyUSB0", f"0000@{SB}ttyUSB1"}
    assert {p.id for p in result.packs if p.online} == ids
    assert result.known_packs == frozenset(ids)          # the ambiguous plain id is forgotten
    shared = PackIdShared("0000", (SB + "ttyUSB0", SB + "ttyUSB1"), tuple(sorted(ids)))
    assert shared in result.events
    assert result.values["/System/NrOfModulesOnline"] == 2
    assert result.values["/System/NrOfModulesOffline"] == 0


def test_an_excluded_known_pack_is_forgotten() -> None:
    bank = charging_bank()
    engine = Engine(cfg(discovery={"exclude": ["B"]}), known_packs=["A", "B"])
    result = tick(engine, bank, 0.0)
    assert result.known_packs == frozenset({"A"})
    assert result.values["/System/NrOfModulesOffline"] == 0
    assert [p.id for p in result.packs] == ["A"]


def test_cell_voltages_published_and_invalidated() -> None:
    bank = charging_bank()
    bank.update("ttyUSB0", 0.0, **{"/Voltages/Cell1": 3.31, "/Voltages/Cell2": 3.32})
    engine = Engine(cfg(discovery={"cell_voltages": True}))
    v = tick(engine, bank, 0.0).values
    assert v["/Voltages/A_Cell1"] == 3.31 and v["/Voltages/A_Cell2"] == 3.32
    bank.remove("ttyUSB0")
    v = tick(engine, bank, 1.0).values
    assert "/Voltages/A_Cell1" in v and v["/Voltages/A_Cell1"] is None
    assert not any(p.startswith("/Voltages/A_") for p in tick(Engine(default_config()), charging_bank(), 0.0).values)


# ---- plug-in strategies -------------------------------------------------------------------------


class GreedyCharge:
    """A strategy that asks for far more than the packs allow."""

    def limits(self, ctx: TickContext, current: CurrentResult) -> ChargeLimits:
        return ChargeLimits(cvl=58.0, ccl=10_000.0, dcl=10_000.0, charge_reason="greedy",
                            discharge_reason="greedy", charge_source="greedy",
                            discharge_source="greedy", events=(StrategyNote("greedy says hi"),),
                            values={"/Info/ChargeMode": "Greedy"})


def test_a_plugged_in_strategy_stays_inside_the_envelope() -> None:
    bank = charging_bank()
    engine = Engine(default_config(), strategies=Strategies(BmsSum(), BmsAverage(), GreedyCharge()))
    result = tick(engine, bank, 0.0)
    assert result.values["/Info/MaxChargeCurrent"] == pytest.approx(200.0)   # 100 / 0.5
    assert result.values["/Info/MaxChargeVoltage"] == 58.0
    assert result.values["/Info/ChargeMode"] == "Greedy"
    assert StrategyNote("greedy says hi") in result.events


def test_an_unavailable_strategy_is_refused_with_its_key() -> None:
    config = default_config()
    broken = config.model_copy(update={"soc": config.soc.model_copy(update={"strategy": "guess"})})
    with pytest.raises(ValueError, match="soc.strategy = 'guess'"):
        Engine(broken)


# ---- fail-safe ----------------------------------------------------------------------------------


def test_fail_safe_limits() -> None:
    bank = charging_bank()
    bank.update("ttyUSB0", 0.0, voltage=53.0, cvl=55.2, dcl=150.0)
    bank.update("ttyUSB1", 0.0, voltage=52.8, cvl=54.0, dcl=90.0)
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    result = engine.fail_safe(1.0, bank.readings(), KeyError("x"))
    v = result.values
    assert set(DYNAMIC_PATHS) <= set(v)
    assert v["/Info/MaxChargeCurrent"] == 0.0
    assert v["/Info/MaxDischargeCurrent"] == 90.0            # smallest single-pack DCL
    assert v["/Info/MaxChargeVoltage"] == 52.8               # min(min CVL 54.0, lowest voltage 52.8)
    assert v["/Alarms/InternalFailure"] == 2
    assert result.events == [TickFailed("KeyError", 90.0)]
    assert str(result.events[0]) == ("tick failed (KeyError): publishing safe limits (CCL 0, "
                                     "DCL 90 A) until a tick succeeds")
    assert result.known_packs == frozenset({"A", "B"})
    assert engine.fail_safe(2.0, bank.readings(), KeyError("x")).events == []
    result = tick(engine, bank, 3.0)
    assert TicksRecovered() in result.events
    assert result.values["/Alarms/InternalFailure"] == 0


def test_fail_safe_block_policy_and_garbage() -> None:
    engine = Engine(cfg(safety={"on_internal_error": "block"}))
    bank = charging_bank()
    v = engine.fail_safe(0.0, bank.readings(), RuntimeError()).values
    assert v["/Info/MaxDischargeCurrent"] == 0.0 and v["/Info/MaxChargeCurrent"] == 0.0
    weird: list[Any] = [ServiceReading(SB + "x", None, None, None),  # type: ignore[arg-type]
                        None, 42, ServiceReading(SB + "y", {"/Dc/0/Voltage": "x"}, 0.0, 0.0)]
    v = Engine(default_config()).fail_safe(0.0, weird, ValueError()).values
    assert v["/Info/MaxChargeCurrent"] == 0.0 and v["/Info/MaxDischargeCurrent"] == 0.0
    assert v["/Info/MaxChargeVoltage"] is None and v["/Alarms/InternalFailure"] == 2


@pytest.mark.parametrize("block", [{"/Io/AllowToDischarge": 0},
                                   {"/System/NrOfModulesBlockingDischarge": 1}])
def test_fail_safe_honours_a_discharge_block(block: dict[str, int]) -> None:
    bank = charging_bank()
    bank.update("ttyUSB0", 0.0, **block)
    engine = Engine(default_config())                       # on_internal_error = "dcl_min_pack"
    assert tick(engine, bank, 0.0).values["/Info/MaxDischargeCurrent"] == 0.0
    v = engine.fail_safe(1.0, bank.readings(), KeyError("x")).values
    assert v["/Info/MaxDischargeCurrent"] == 0.0
    assert "Pack A blocks discharging" in v["/Info/DischargeLimitation"]


def test_fail_safe_honours_the_block_of_a_pack_that_is_gone() -> None:
    bank = charging_bank()
    bank.update("ttyUSB0", 0.0, **{"/Io/AllowToDischarge": 0})
    engine = Engine(default_config())
    tick(engine, bank, 0.0)
    bank.remove("ttyUSB0")
    v = engine.fail_safe(1.0, bank.readings(), KeyError("x")).values
    assert v["/Info/MaxDischargeCurrent"] == 0.0


def test_a_failed_tick_never_publishes_more_than_the_last_good_one() -> None:
    bank = charging_bank()
    engine = Engine(cfg(freshness={"on_pack_lost": "block"}))   # fail-safe: smallest pack DCL
    bank.update("ttyUSB0", 0.0, voltage=None)               # A offline: the policy blocks both
    good = tick(engine, bank, 0.0).values
    assert good["/Info/MaxDischargeCurrent"] == 0.0
    v = engine.fail_safe(1.0, bank.readings(), KeyError("x")).values
    assert v["/Info/MaxDischargeCurrent"] == 0.0
    assert v["/Info/MaxChargeVoltage"] <= good["/Info/MaxChargeVoltage"]


def test_the_last_line_of_the_fail_safe_keeps_the_known_packs_and_the_last_cvl(
        monkeypatch: pytest.MonkeyPatch) -> None:
    bank = charging_bank()
    engine = Engine(default_config())
    good = tick(engine, bank, 0.0).values

    def broken(*_: Any) -> None:
        raise RuntimeError("fail-safe broke too")

    monkeypatch.setattr(engine, "_fail_safe", broken)
    result = engine.fail_safe(1.0, bank.readings(), KeyError("x"))
    assert result.known_packs == frozenset({"A", "B"})
    assert result.values["/Info/MaxChargeVoltage"] == good["/Info/MaxChargeVoltage"]
    assert result.values["/Info/MaxChargeCurrent"] == 0.0
    assert result.values["/Info/MaxDischargeCurrent"] == 0.0


def test_paths_for_the_monitor() -> None:
    assert SAFETY_PATHS <= PACK_PATHS
    assert {"/Info/MaxChargeCurrent", "/Io/AllowToCharge", "/Serial"} <= PACK_PATHS


class WallClockCharge(GreedyCharge):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def limits(self, ctx: TickContext, current: CurrentResult) -> ChargeLimits:
        self.seen.append(ctx.wall)
        return super().limits(ctx, current)


def test_the_wall_clock_reaches_the_strategies() -> None:
    charge = WallClockCharge()
    engine = Engine(default_config(), strategies=Strategies(BmsSum(), BmsAverage(), charge))
    tick(engine, charging_bank(), 0.0)
    engine.tick(1.0, charging_bank().readings(), wall=1_700_000_000.0)
    assert charge.seen == [None, 1_700_000_000.0]


def test_a_service_that_comes_back_is_parsed_afresh_even_with_the_same_stamps() -> None:
    # the stamps of the new appearance are taken from the old one on purpose: only the appearance
    # time tells the engine that its parse of 53.2 V belongs to another life of the service
    engine = Engine(default_config())
    values = pack_values("A", voltage=53.2)
    stamps = {**dict.fromkeys(values, 1.0), "/Soc": 2.0}
    first = engine.tick(2.0, [ServiceReading(SB + "ttyUSB0", values, 2.0, 1.0, stamps)])
    assert status(first, "A").voltage == 53.2
    back = pack_values("A", voltage=52.0)  # the driver restarted between two ticks
    result = engine.tick(4.0, [ServiceReading(SB + "ttyUSB0", back, 4.0, 3.5, stamps)])
    assert status(result, "A").voltage == 52.0


def test_an_implausibly_small_capacity_is_ignored_and_the_tick_works() -> None:
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", capacity=100.0, ccl=100.0)
    bank.add("ttyUSB1", 0.0, "B", capacity=5e-324, ccl=50.0)
    engine = Engine(default_config())
    first = tick(engine, bank, 1.0)
    # B's capacity is unknown, so its share is the whole bank: CCL = min(100 / 1, 50 / 1) = 50 A
    assert first.values["/Info/MaxChargeCurrent"] == pytest.approx(50.0)
    assert first.values["/InstalledCapacity"] == 100.0
    assert first.values["/Alarms/InternalFailure"] == 0
    assert ValueIgnored("Pack B", "/InstalledCapacity", "5e-324 is outside [1, 100000]") \
        in first.events
    bank.update("ttyUSB0", 2.0, soc=51.0)
    again = tick(engine, bank, 2.0)
    assert not any(isinstance(e, ValueIgnored) for e in again.events)
    assert again.values["/Info/MaxChargeCurrent"] == pytest.approx(50.0)


def test_the_last_measured_share_still_counts_when_charging_starts_again() -> None:
    # A takes 80 % of the charge current (lower internal resistance), B 20 %; capacities are equal,
    # so the capacity shares are 0.5. While 50 A flow, CCL = min(50 / 0.8, 100 / 0.5) = 62.5 A.
    bank = Bank()
    bank.add("ttyUSB0", 0.0, "A", current=40.0, ccl=50.0)
    bank.add("ttyUSB1", 0.0, "B", current=10.0, ccl=100.0)
    engine = Engine(default_config())
    assert tick(engine, bank, 1.0).values["/Info/MaxChargeCurrent"] == pytest.approx(62.5)
    # Rest for 60 s, then discharge 50 A split 30 / 70: no charge current to measure. The charge
    # share remembered for A fades towards 0.5 with a half-life of an hour:
    # 0.5 + 0.3 x 0.5 ** (60 / 3600) = 0.79654, CCL = 50 / 0.79654 = 62.77 A (without it: 100 A,
    # and A would take 80 A against its own 50 A on the first tick of charging).
    for service in ("ttyUSB0", "ttyUSB1"):
        bank.update(service, 2.0, current=0.0)
    bank.update("ttyUSB0", 61.0, soc=51.0)
    rest = tick(engine, bank, 61.0).values
    assert rest["/Info/MaxChargeCurrent"] == pytest.approx(50.0 / (0.5 + 0.3 * 0.5 ** (60 / 3600)))
    bank.update("ttyUSB0", 62.0, current=-15.0)
    bank.update("ttyUSB1", 62.0, current=-35.0)
    reversed_ = tick(engine, bank, 62.0).values
    assert reversed_["/Info/MaxChargeCurrent"] == pytest.approx(
        50.0 / (0.5 + 0.3 * 0.5 ** (61 / 3600)))
    # DCL from the measured discharge split: min(100 / 0.5, 100 / 0.7) = 142.9 A
    assert reversed_["/Info/MaxDischargeCurrent"] == pytest.approx(100.0 / 0.7)
    # Ten hours later the remembered share has faded to the capacity share (within 0.1 %)
    for service in ("ttyUSB0", "ttyUSB1"):
        bank.update(service, 36062.0, current=0.0, soc=52.0)
    late = tick(engine, bank, 36062.0).values
    assert late["/Info/MaxChargeCurrent"] == pytest.approx(100.0, rel=1e-3)
    assert late["/Info/MaxDischargeCurrent"] == pytest.approx(200.0, rel=1e-3)
