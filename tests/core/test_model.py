"""The pack model: paths, validation of raw pack values, snapshots, and the online/offline state
machine (pack_paths, validation, snapshot, freshness)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest

from aggbatt.core.freshness import (
    TRANSITIONS,
    Health,
    PackState,
    PackTracker,
    data_age,
    expected_current,
    fault_of,
    stale_verdict,
)
from aggbatt.core.pack_paths import SAFETY_PATHS, needs_urgent_tick
from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.validation import PACK_PATHS, pack_paths, revalidate, validate
from tests.factories import snapshot

GOOD = {
    "/Dc/0/Voltage": 53.21,
    "/Dc/0/Current": -12.5,
    "/Soc": 87.0,
    "/InstalledCapacity": 280,
    "/ConsumedAmphours": -36.4,
    "/Dc/0/Temperature": 21.5,
    "/Info/MaxChargeVoltage": 55.2,
    "/Info/MaxChargeCurrent": 100,
    "/Info/MaxDischargeCurrent": 150.0,
    "/Io/AllowToCharge": 1,
    "/Alarms/HighCellVoltage": 2,
    "/System/MaxVoltageCellId": "C7",
    "/System/MaxCellVoltage": 3.412,
    "/System/NrOfCellsPerBattery": 16,
}


def test_valid_values_are_kept_with_their_types() -> None:
    checked = validate(GOOD)
    assert checked.problems == {}
    assert checked.values["/Dc/0/Voltage"] == 53.21
    assert checked.values["/InstalledCapacity"] == 280.0
    assert isinstance(checked.values["/InstalledCapacity"], float)
    assert checked.values["/Io/AllowToCharge"] == 1
    assert isinstance(checked.values["/Alarms/HighCellVoltage"], int)
    assert checked.values["/System/MaxVoltageCellId"] == "C7"
    assert checked.values["/System/NrOfCellsPerBattery"] == 16


def test_none_is_missing_but_no_problem() -> None:
    checked = validate({"/Dc/0/Temperature": None, "/Soc": None})
    assert checked.values == {}
    assert checked.problems == {}


@pytest.mark.parametrize(("path", "raw"), [
    ("/Dc/0/Voltage", "53.2"),          # a string where a number belongs
    ("/Dc/0/Voltage", math.nan),
    ("/Dc/0/Voltage", math.inf),
    ("/Dc/0/Voltage", [53.2]),
    ("/Dc/0/Voltage", {}),
    ("/Dc/0/Voltage", True),            # bool is not a number
    ("/Dc/0/Voltage", 1000.0),          # absurd: above 100 V
    ("/Dc/0/Voltage", 0.0),             # 0 V is a broken reading
    ("/Dc/0/Current", 5000.0),          # |I| must be < 5000 A
    ("/Dc/0/Current", -5000.0),
    ("/InstalledCapacity", -280.0),     # negative capacity
    ("/InstalledCapacity", 0),          # capacity must be > 0
    ("/Capacity", -1.0),
    ("/ConsumedAmphours", 5.0),         # consumed Ah is <= 0
    ("/Soc", 100.5),
    ("/Soc", -0.1),
    ("/Dc/0/Temperature", 121.0),
    ("/Dc/0/Temperature", -51.0),
    ("/System/MaxCellVoltage", 5.01),
    ("/Info/MaxChargeCurrent", -1.0),
    ("/Info/MaxChargeVoltage", 101.0),
    ("/Alarms/LowVoltage", 3),          # levels are 0, 1, 2
    ("/Alarms/LowVoltage", 1.5),        # not a whole number
    ("/Io/AllowToCharge", 2),
    ("/System/NrOfModulesOnline", -1),
    ("/CustomName", 5),                 # a number where text belongs
    ("/Serial", [b"x"]),
])
def test_garbage_is_missing_and_reported(path: str, raw: object) -> None:
    checked = validate({path: raw})
    assert path not in checked.values
    assert path in checked.problems
    assert repr(raw)[:10] in checked.problems[path]


def test_range_edges_that_are_plausible() -> None:
    checked = validate({"/Soc": 0, "/Capacity": 0.0, "/ConsumedAmphours": 0, "/Dc/0/Temperature": -50,
                        "/Dc/0/Current": 4999.9, "/Info/MaxChargeCurrent": 0, "/Alarms/LowSoc": 2.0,
                        "/Io/AllowToDischarge": False})
    assert checked.problems == {}
    assert checked.values["/Alarms/LowSoc"] == 2
    assert checked.values["/Io/AllowToDischarge"] == 0  # a bool flag from a CAN driver


def test_anything_that_is_not_a_mapping_is_no_values() -> None:
    for raw in (None, "text", [("/Soc", 50)], 42):
        checked = validate(raw)
        assert checked.values == {} and checked.problems == {}


def test_paths_nobody_reads_are_ignored() -> None:
    checked = validate({"/History/ChargeCycles": "garbage", "/Voltages/Cell3": 3.3})
    assert checked.values == {} and checked.problems == {}


def test_cell_voltages_only_when_asked_for() -> None:
    raw = {"/Voltages/Cell1": 3.301, "/Voltages/Cell2": 7.0, "/Voltages/Cell3": None}
    assert validate(raw).values == {}
    checked = validate(raw, cell_voltages=True)
    assert checked.values == {"/Voltages/Cell1": 3.301}
    assert set(checked.problems) == {"/Voltages/Cell2"}


def test_pack_paths() -> None:
    assert "/Info/MaxChargeCurrent" in PACK_PATHS
    assert "/Serial" in PACK_PATHS and "/ProductName" in PACK_PATHS
    assert not any(p.startswith("/Voltages/Cell") for p in PACK_PATHS)
    assert "/Voltages/Cell32" in pack_paths(True)
    assert pack_paths(False) == PACK_PATHS
    # pack power is V x I (what serialbattery publishes), so its signals are not subscribed to
    assert "/Dc/0/Power" not in pack_paths(True)
    # /History needs a match rule of its own per pack: read only when the bank's is published
    assert not any(p.startswith("/History/") for p in pack_paths(True))
    assert "/History/ChargedEnergy" in pack_paths(False, history=True)
    assert "/Voltages/Cell1" in pack_paths(True, history=True)


def test_safety_paths_and_urgent_ticks() -> None:
    for path in ("/Info/MaxChargeCurrent", "/Io/AllowToCharge", "/System/NrOfModulesBlockingCharge",
                 "/System/MaxCellVoltage", "/Alarms/HighCellVoltage", "/System/NrOfModulesOnline"):
        assert path in SAFETY_PATHS
        assert needs_urgent_tick({path: 1})
    assert SAFETY_PATHS <= PACK_PATHS
    # Voltage and current change every second: urgent only when they turn invalid (link loss).
    assert not needs_urgent_tick({"/Dc/0/Voltage": 53.1, "/Dc/0/Current": 2.0, "/Soc": 50.0})
    assert needs_urgent_tick({"/Dc/0/Voltage": None})
    assert needs_urgent_tick({"/Dc/0/Current": None})


def test_snapshot_from_validated_values() -> None:
    raw = dict(GOOD)
    raw["/Alarms/LowVoltage"] = "garbage"
    raw["/Voltages/Cell2"] = 3.3
    snap = PackSnapshot.build("S1", "Pack A", "com.victronenergy.battery.ttyUSB0",
                              validate(raw, cell_voltages=True).values)
    assert (snap.voltage, snap.current, snap.soc, snap.installed_capacity) == (53.21, -12.5, 87.0, 280.0)
    assert (snap.cvl, snap.ccl, snap.dcl) == (55.2, 100.0, 150.0)
    assert snap.alarms == {"/Alarms/HighCellVoltage": 2}
    assert snap.cell_voltages == {2: 3.3}
    assert snap.temperature == 21.5
    assert snap.power == pytest.approx(-665.125)  # 53.21 V x -12.5 A


def test_snapshot_power_is_voltage_times_current_not_the_published_power() -> None:
    published = validate({**GOOD, "/Dc/0/Power": 1.0}).values
    assert PackSnapshot.build("S1", "A", "svc", published).power == pytest.approx(-665.125)
    no_current = validate({**GOOD, "/Dc/0/Current": None, "/Dc/0/Power": -665.0}).values
    assert PackSnapshot.build("S1", "A", "svc", no_current).power is None


@pytest.mark.parametrize(("fields", "charge", "discharge"), [
    ({"ccl": 100.0, "dcl": 100.0}, None, None),
    ({"ccl": 0.0, "dcl": 100.0}, "CCL 0", None),
    ({"ccl": 100.0, "dcl": 0.0}, None, "DCL 0"),
    ({"ccl": 100.0, "dcl": 100.0, "allow_charge": 0}, "AllowToCharge 0", None),
    ({"ccl": 100.0, "dcl": 100.0, "allow_discharge": 0}, None, "AllowToDischarge 0"),
    ({"ccl": 100.0, "dcl": 100.0, "blocking_charge": 1}, "blocking charge", None),
    ({"ccl": 100.0, "dcl": 100.0, "blocking_discharge": 1}, None, "blocking discharge"),
    ({"ccl": 100.0, "dcl": 100.0, "allow_charge": None, "blocking_charge": None}, None, None),
])
def test_blocking(fields: dict[str, object], charge: str | None, discharge: str | None) -> None:
    snap = snapshot("a", name="A", service="s", **fields)
    assert snap.charge_block() == charge
    assert snap.discharge_block() == discharge


# ---- state machine ------------------------------------------------------------------------------


def test_every_state_and_event_has_a_transition() -> None:
    assert set(TRANSITIONS) == {(s, h) for s in PackState for h in Health}
    assert all(target is not PackState.NEW for target in TRANSITIONS.values())


def test_first_admission_is_immediate() -> None:
    tracker = PackTracker("a")
    assert tracker.update(10.0, None, readmit_after=5.0) is PackState.NEW
    assert tracker.online and tracker.reason is None and tracker.since == 10.0


def test_offline_then_readmitted_after_readmit_after_seconds() -> None:
    tracker = PackTracker("a")
    tracker.update(0.0, None, 5.0)
    tracker.update(1.0, "service gone", 5.0)
    assert tracker.state is PackState.OFFLINE and tracker.reason == "service gone"
    tracker.update(2.0, None, 5.0)          # healthy from t = 2
    assert tracker.state is PackState.READMITTING
    tracker.update(6.9, None, 5.0)          # 4.9 s healthy: not yet
    assert tracker.state is PackState.READMITTING and not tracker.online
    tracker.update(7.0, None, 5.0)          # 7.0 - 2.0 = 5.0 s: re-admitted
    assert tracker.online


def test_a_fault_while_readmitting_restarts_the_wait() -> None:
    tracker = PackTracker("a", state=PackState.OFFLINE)
    tracker.update(0.0, None, 5.0)
    tracker.update(4.0, "no valid /Dc/0/Voltage", 5.0)
    assert tracker.state is PackState.OFFLINE
    tracker.update(5.0, None, 5.0)          # healthy again from t = 5
    tracker.update(9.0, None, 5.0)          # only 4 s
    assert not tracker.online
    tracker.update(10.0, None, 5.0)         # 10 - 5 = 5 s
    assert tracker.online


def test_readmit_after_zero_readmits_at_once() -> None:
    tracker = PackTracker("a", state=PackState.OFFLINE)
    tracker.update(3.0, None, 0.0)
    assert tracker.online


def test_a_known_pack_never_seen_starts_offline() -> None:
    tracker = PackTracker("a")
    tracker.update(0.0, "known pack not present", 5.0)
    assert tracker.state is PackState.OFFLINE


# ---- freshness ----------------------------------------------------------------------------------


def test_a_pack_reporting_current_must_change_within_stale_after() -> None:
    pack = _snap(current=12.0)
    assert stale_verdict(pack, 10.0, 0.0, None, False, 10.0, 2.0) is None   # at the limit: fresh
    verdict = stale_verdict(pack, 10.5, 0.0, None, False, 10.0, 2.0)
    assert verdict is not None and "10.5 s" in verdict and "12.0 A" in verdict


def test_a_quiet_pack_at_zero_amps_is_stale_only_on_evidence() -> None:
    quiet = _snap(current=0.0)
    # silence alone, however long, proves nothing
    assert stale_verdict(quiet, 3600.0, 0.0, None, False, 10.0, 2.0) is None
    # the bank carried current it does not block for longer than stale_after
    evidence = expected_current(quiet, 60.0, 0.5, 2.0)
    assert evidence is not None and "60.0 A charging" in evidence
    assert stale_verdict(quiet, 30.0, 10.0, evidence, False, 10.0, 2.0) is None
    assert "charging" in stale_verdict(quiet, 30.0, 10.5, evidence, False, 10.0, 2.0)  # type: ignore[operator]
    # a driver that did not answer the daemon's probe
    assert "probe" in stale_verdict(quiet, 300.0, 0.0, None, True, 10.0, 2.0)  # type: ignore[operator]


def test_evidence_against_a_pack_without_a_valid_current_is_reported_without_raising() -> None:
    lost = _snap(current=None, modules_online=0)
    evidence = expected_current(lost, 60.0, 0.5, 2.0)
    assert evidence is not None
    verdict = stale_verdict(lost, 30.0, 10.5, evidence, False, 10.0, 2.0)
    assert verdict is not None and "no valid current" in verdict


def test_no_evidence_when_the_pack_blocks_the_flowing_direction_or_its_share_is_small() -> None:
    blocked = _snap(current=0.0, ccl=0.0)
    assert expected_current(blocked, 60.0, 0.5, 2.0) is None        # charging: its FET is open
    assert expected_current(blocked, -60.0, 0.5, 2.0) is not None   # discharging it must carry
    assert expected_current(_snap(current=0.0, allow_discharge=0), -60.0, 0.5, 2.0) is None
    assert expected_current(_snap(current=0.0), 3.0, 0.5, 2.0) is None   # 1.5 A share: noise
    assert expected_current(_snap(current=5.0), 60.0, 0.5, 2.0) is None  # the own-current rule
    assert expected_current(_snap(current=0.0), None, 0.5, 2.0) is None


def test_evidence_must_hold_without_a_break_and_a_stale_verdict_sticks_until_a_change() -> None:
    tracker = PackTracker("a")
    assert tracker.evidence_for(100.0, "flows", 50.0) == 0.0
    assert tracker.evidence_for(108.0, "flows", 50.0) == 8.0
    assert tracker.evidence_for(109.0, "flows", 105.0) == 4.0      # its data changed at 105 s
    assert tracker.evidence_for(110.0, None, 105.0) == 0.0          # a break starts it anew
    assert tracker.evidence_for(111.0, "flows", 105.0) == 0.0
    assert tracker.staleness("frozen", 50.0) == "frozen"
    assert tracker.staleness(None, 50.0) == "frozen"                # the bank went to rest
    assert tracker.staleness(None, 120.0) is None                   # a value changed


def test_data_age() -> None:
    assert data_age(100.0, 90.0, 50.0) == 10.0
    assert data_age(100.0, 40.0, 95.0) == 5.0       # just appeared: its scan is fresh data
    assert data_age(100.0, 110.0, 0.0) == 0.0        # never negative
    assert data_age(100.0, math.nan, "x") is None
    assert data_age(100.0, None, 60.0) == 40.0


_snap = partial(snapshot, "a", name="A", service="s", voltage=53.0, current=1.0, cvl=55.0, ccl=50.0,
                dcl=50.0)


def test_fault_reasons_in_order() -> None:
    assert fault_of(None, None, seen_before=True) == "service gone"
    assert fault_of(None, None, seen_before=False) == "known pack not present"
    assert "link lost" in fault_of(_snap(modules_online=0, voltage=None), 1.0, True)  # type: ignore[operator]
    assert fault_of(_snap(voltage=None), 1.0, True) == "no valid /Dc/0/Voltage"
    assert fault_of(_snap(current=None), 1.0, True) == "no valid /Dc/0/Current"
    assert "CVL" in fault_of(_snap(cvl=None), 1.0, True)  # type: ignore[operator]
    assert "CCL" in fault_of(_snap(ccl=None), 1.0, True)  # type: ignore[operator]
    assert "DCL" in fault_of(_snap(dcl=None), 1.0, True)  # type: ignore[operator]
    assert fault_of(_snap(), None, True) == "no receive time"
    assert fault_of(_snap(modules_online=1), 0.0, True) is None


# ---- incremental validation ---------------------------------------------------------------------


def stamped(values: dict[str, Any], at: float) -> dict[str, float]:
    return dict.fromkeys(values, at)


def test_revalidate_parses_only_values_with_a_new_stamp() -> None:
    values = dict(GOOD)
    stamps = stamped(values, 1.0)
    first = revalidate(None, values, stamps)
    assert first.values == validate(values).values
    stamps["/Soc"] = 2.0
    second = revalidate(first, values, stamps)  # moves the newest stamp to 2.0
    # a value whose stamp did not move (and is older than the newest) is taken from before: this
    # proves the old parse is reused, so the stamps must move on every change (monitor contract)
    values["/Dc/0/Voltage"] = 54.0
    assert revalidate(second, values, stamps).values["/Dc/0/Voltage"] == 53.21
    stamps["/Dc/0/Voltage"] = 3.0
    third = revalidate(second, values, stamps)
    assert third.values["/Dc/0/Voltage"] == 54.0
    values["/Soc"] = "garbage"
    stamps["/Soc"] = 4.0
    fourth = revalidate(third, values, stamps)
    assert "/Soc" not in fourth.values and "not a number" in fourth.problems["/Soc"]
    values["/Soc"] = 55.0
    stamps["/Soc"] = 5.0
    fifth = revalidate(fourth, values, stamps)
    assert fifth.values["/Soc"] == 55.0 and fifth.problems == {}


def test_revalidate_reparses_a_change_with_the_newest_stamp_again() -> None:
    # a coarse clock: two changes in the same clock tick carry the same stamp
    values = dict(GOOD)
    stamps = stamped(values, 1.0)
    stamps["/Soc"] = 2.0
    first = revalidate(None, values, stamps)
    values["/Soc"] = 60.0  # changed again at 2.0, after the tick that parsed /Soc stamped 2.0
    assert revalidate(first, values, stamps).values["/Soc"] == 60.0


def test_revalidate_parses_everything_when_it_cannot_trust_the_stamps() -> None:
    values = dict(GOOD)
    first = revalidate(None, values, stamped(values, 1.0))
    values["/Dc/0/Voltage"] = 54.0
    assert revalidate(first, values, {}).values["/Dc/0/Voltage"] == 54.0  # no stamps
    partial = stamped(values, 1.0)
    del partial["/Dc/0/Voltage"]                                         # one value unstamped
    assert revalidate(first, values, partial).values["/Dc/0/Voltage"] == 54.0
    base = {**stamped(values, 1.0), "/Dc/0/Temperature": 2.0}  # newest 2.0: the 1.0 ones are settled
    settled = revalidate(None, values, base)
    values["/Dc/0/Voltage"] = 55.0                    # changed without a new stamp ...
    nan_first = {"/Dc/0/Temperature": math.nan, **base}
    nan_first["/Dc/0/Temperature"] = math.nan         # ... but the stamps are not finite numbers
    assert revalidate(settled, values, base).values["/Dc/0/Voltage"] == 54.0
    assert revalidate(settled, values, nan_first).values["/Dc/0/Voltage"] == 55.0
    del values["/Soc"]                                                   # a path went away
    gone = revalidate(first, values, stamped(values, 1.0))
    assert "/Soc" not in gone.values and gone.values["/Dc/0/Voltage"] == 55.0
    cells = {**GOOD, "/Voltages/Cell1": 3.3}
    plain = revalidate(None, cells, stamped(cells, 1.0))
    assert revalidate(plain, cells, stamped(cells, 1.0), cell_voltages=True).values[
        "/Voltages/Cell1"] == 3.3
    assert revalidate(first, {"/Soc": 1.0}, {"/Soc": "x"}).values == {"/Soc": 1.0}
    assert revalidate(first, None, {"/Soc": 1.0}).values == {}
