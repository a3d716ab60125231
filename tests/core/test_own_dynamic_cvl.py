"""Dynamic CVL controller: immediate reduction, hold, bounded recovery, no sawtooth."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from aggbatt.core.strategies.dynamic_cvl import DynamicCvl, DynamicParams, overvoltage
from tests.factories import cell_snapshot

PARAMS = DynamicParams(max_cell_voltage=3.45, hold_time=60.0, recovery_rate=0.001, gain=1.0)
TARGET = 56.0
FLOOR = 46.4


HIGH = [3.50] + [3.40] * 15  # one cell 50 mV over; sum 54.50 V
OK = [3.40] * 16  # sum 54.40 V
LOW = [3.3125] * 16  # sum 53.00 V


def test_penalty_sum_over_all_cells():
    assert abs(overvoltage(cell_snapshot("a", [3.50, 3.47, 3.40, 3.45]), 3.45) - 0.07) < 1e-9
    # Only the highest cell known: a lower bound of the sum.
    assert abs(overvoltage(cell_snapshot("a", [3.50, 3.47, 3.40], per_cell=False), 3.45) - 0.05) < 1e-9


def test_no_overvoltage_leaves_the_target():
    dyn = DynamicCvl(PARAMS)
    result = dyn.update(0.0, TARGET, [cell_snapshot("a", OK)], FLOOR)
    assert (result.cvl, result.active, result.reason) == (TARGET, False, None)


def test_reduction_uses_the_over_pack_only():
    dyn = DynamicCvl(PARAMS)
    result = dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH), cell_snapshot("b", LOW)], FLOOR)
    # 54.50 - 1.0 x 0.05 = 54.45; the healthy 53.0 V pack does not drag the CVL down to 53.0.
    assert abs(result.cvl - 54.45) < 1e-9
    assert result.active and result.over_pack == "a"
    assert "a cell 3.500 V over 3.450 V" in (result.reason or "")


def test_gain_scales_the_reduction():
    dyn = DynamicCvl(DynamicParams(3.45, 60.0, 0.001, gain=4.0))
    assert abs(dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH)], FLOOR).cvl - 54.30) < 1e-9


def test_floor_bounds_the_reduction():
    dyn = DynamicCvl(DynamicParams(3.45, 60.0, 0.001, gain=10.0))
    crazy = [4.4] + [3.40] * 15  # a broken cell reading: 0.95 V over, x10
    assert dyn.update(0.0, TARGET, [cell_snapshot("a", crazy)], FLOOR).cvl == FLOOR


def test_repeated_ticks_with_the_same_readings_do_not_integrate():
    fast, slow = DynamicCvl(PARAMS), DynamicCvl(PARAMS)
    for i in range(100):
        a = fast.update(i * 0.1, TARGET, [cell_snapshot("a", HIGH)], FLOOR)
    for i in range(10):
        b = slow.update(float(i), TARGET, [cell_snapshot("a", HIGH)], FLOOR)
    assert abs(a.cvl - 54.45) < 1e-9 and abs(b.cvl - 54.45) < 1e-9


def test_never_rises_while_a_cell_is_over():
    dyn = DynamicCvl(PARAMS)
    dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH)], FLOOR)
    # The sum rose (charger overshoot) but the cell is still over: the limit stays.
    higher = [3.46] + [3.42] * 15
    assert abs(dyn.update(1.0, TARGET, [cell_snapshot("a", higher)], FLOOR).cvl - 54.45) < 1e-9


def test_hold_then_bounded_recovery_then_idle():
    dyn = DynamicCvl(PARAMS)
    dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH)], FLOOR)
    dyn.update(10.0, TARGET, [cell_snapshot("a", HIGH)], FLOOR)  # last over-voltage at t = 10
    held = dyn.update(69.9, TARGET, [cell_snapshot("a", OK)], FLOOR)
    assert abs(held.cvl - 54.45) < 1e-9 and "held" in (held.reason or "")
    # The hold ends at t = 70; 20 s later it may have risen by 20 x 1 mV.
    dyn.update(80.0, TARGET, [cell_snapshot("a", OK)], FLOOR)
    ramp = dyn.update(90.0, TARGET, [cell_snapshot("a", OK)], FLOOR)
    assert abs(ramp.cvl - 54.47) < 1e-9 and ramp.active
    # 56.0 - 54.45 = 1.55 V at 1 mV/s: back at the target 1550 s after the hold.
    assert dyn.update(70.0 + 1549.0, TARGET, [cell_snapshot("a", OK)], FLOOR).active
    done = dyn.update(70.0 + 1550.0, TARGET, [cell_snapshot("a", OK)], FLOOR)
    assert (done.cvl, done.active) == (TARGET, False)


def test_missing_cell_readings_hold_the_lowered_cvl():
    dyn = DynamicCvl(PARAMS)
    dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH), cell_snapshot("b", OK)], FLOOR)
    blind = replace(cell_snapshot("a", OK, per_cell=False), max_cell_voltage=None, min_cell_voltage=None)
    # Long past the hold time: a reading that is missing is no proof that the cell came down.
    held = dyn.update(200.0, TARGET, [blind, cell_snapshot("b", OK)], FLOOR)
    assert abs(held.cvl - 54.45) < 1e-9 and "no cell reading from a" in (held.reason or "")
    held = dyn.update(400.0, TARGET, [cell_snapshot("b", OK)], FLOOR)  # a offline
    assert abs(held.cvl - 54.45) < 1e-9 and held.active
    # a is back and fine: the hold counts from the last moment a was unknown, then the ramp.
    assert abs(dyn.update(459.0, TARGET, [cell_snapshot("a", OK), cell_snapshot("b", OK)], FLOOR).cvl - 54.45) < 1e-9
    ramp = dyn.update(470.0, TARGET, [cell_snapshot("a", OK), cell_snapshot("b", OK)], FLOOR)
    assert abs(ramp.cvl - 54.46) < 1e-9


def test_a_forgotten_pack_no_longer_holds_the_lowered_cvl():
    dyn = DynamicCvl(PARAMS)
    dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH), cell_snapshot("b", OK)], FLOOR)
    assert dyn.update(100.0, TARGET, [cell_snapshot("b", OK)], FLOOR, known={"a", "b"}).cvl == 54.45
    ramp = dyn.update(200.0, TARGET, [cell_snapshot("b", OK)], FLOOR, known={"b"})
    assert ramp.active and "held" not in (ramp.reason or "")


def test_target_dropping_below_the_limit_ends_the_reduction():
    dyn = DynamicCvl(PARAMS)
    dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH)], FLOOR)
    result = dyn.update(100.0, 54.0, [cell_snapshot("a", OK)], FLOOR)
    assert (result.cvl, result.active) == (54.0, False)


def test_new_peak_during_recovery_lowers_from_where_it_is():
    dyn = DynamicCvl(PARAMS)
    dyn.update(0.0, TARGET, [cell_snapshot("a", HIGH)], FLOOR)
    dyn.update(200.0, TARGET, [cell_snapshot("a", OK)], FLOOR)  # 140 s into the ramp: 54.59
    peak = [3.46] + [3.43] * 15  # sum 54.91, 10 mV over -> asks 54.90; the limit 54.59 is lower
    result = dyn.update(201.0, TARGET, [cell_snapshot("a", peak)], FLOOR)
    assert abs(result.cvl - 54.59) < 1e-6
    assert dyn.update(260.0, TARGET, [cell_snapshot("a", OK)], FLOOR).cvl == result.cvl  # held again


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(3.40, 3.50), min_size=20, max_size=200), st.floats(0.1, 5.0))
def test_no_sawtooth_rise_is_bounded_by_the_recovery_rate(peaks, dt):
    """Whatever the peaking cell does, the CVL never rises faster than recovery_rate."""
    dyn = DynamicCvl(PARAMS)
    previous = None
    for i, peak in enumerate(peaks):
        now = i * dt
        cells = [peak] + [3.40] * 15
        cvl = dyn.update(now, TARGET, [cell_snapshot("a", cells)], FLOOR).cvl
        assert cvl <= TARGET
        if previous is not None:
            assert cvl - previous <= PARAMS.recovery_rate * dt + 1e-9
        previous = cvl
