"""CCL/DCL tables, the DCL cut-off latch, blocking and the per-pack-share cap."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggbatt.core.strategies.current_tables import (
    CurrentTables,
    Latch,
    Limit,
    Table,
    TableInputs,
    TableParams,
)

# The reference's LFP preset (reference §6): 200 A x factors.
LFP = TableParams(
    max_charge_current=200.0, max_discharge_current=200.0,
    charge=Table.of([2.90, 2.95, 3.30, 3.40, 3.45], [0.2, 1.0, 1.0, 0.1, 0.0]),
    discharge=Table.of([2.90, 3.00, 3.10], [0.0, 0.05, 1.0]),
    min_cell_voltage=2.90, min_cell_hysteresis=0.1,
)
NO_CAP = Limit(10_000.0, "share cap")


def run(tables: CurrentTables, max_cell: float | None = 3.30, min_cell: float | None = 3.20,
        charge_blocked_by: str | None = None, discharge_blocked_by: str | None = None,
        charge_cap: Limit = NO_CAP, discharge_cap: Limit = NO_CAP) -> tuple[Limit, Limit]:
    return tables.update(TableInputs(max_cell, min_cell, charge_blocked_by, discharge_blocked_by,
                                      charge_cap, discharge_cap))


@pytest.mark.parametrize("volts, amps", [
    (2.0, 40.0),  # flat below the first knot
    (2.90, 40.0),
    (2.925, 120.0),  # halfway 0.2 -> 1.0
    (3.10, 200.0),
    (3.35, 110.0),  # halfway 1.0 -> 0.1
    (3.425, 10.0),  # halfway 0.1 -> 0.0
    (3.45, 0.0),
    (3.80, 0.0),  # flat above the last knot
])
def test_charge_table_values(volts, amps):
    ccl, _ = run(CurrentTables(LFP), max_cell=volts)
    assert ccl.value == pytest.approx(amps)


@pytest.mark.parametrize("volts, amps", [(3.05, 105.0), (3.10, 200.0), (3.30, 200.0)])
def test_discharge_table_values(volts, amps):
    _, dcl = run(CurrentTables(LFP), min_cell=volts)
    assert dcl.value == pytest.approx(amps)


def test_dcl_latch_cuts_off_and_releases_above_the_hysteresis():
    tables = CurrentTables(LFP)
    assert run(tables, min_cell=3.05)[1].value == pytest.approx(105.0)
    assert tables.latch is Latch.OPEN
    _, dcl = run(tables, min_cell=2.90)
    assert dcl.value == 0.0 and "cut off until above 3.000 V" in dcl.reason
    # The cell bounces back when the load stops: still 0 up to and including 3.00 V.
    for volts in (2.95, 2.99, 3.00):
        assert run(tables, min_cell=volts)[1].value == 0.0
    _, dcl = run(tables, min_cell=3.01)
    assert dcl.value == pytest.approx(200.0 * (0.05 + 0.95 * 0.1))
    # Open again: inside the hysteresis band the table applies (no cut-off until 2.90).
    assert run(tables, min_cell=2.95)[1].value == pytest.approx(5.0)


def test_first_reading_inside_the_hysteresis_starts_cut_off():
    tables = CurrentTables(LFP)
    assert run(tables, min_cell=2.95)[1].value == 0.0
    assert tables.latch is Latch.CUT


def test_first_reading_above_the_release_starts_open():
    tables = CurrentTables(LFP)
    run(tables, min_cell=3.2)
    assert tables.latch is Latch.OPEN


def test_missing_min_cell_keeps_the_latch_and_dcl_at_zero():
    tables = CurrentTables(LFP)
    run(tables, min_cell=2.8)
    _, dcl = run(tables, min_cell=None, discharge_cap=Limit(50.0, "cap"))
    assert tables.latch is Latch.CUT
    assert dcl.value == 0.0 and "no valid cell voltages" in dcl.reason


def test_a_partly_known_lowest_cell_never_releases_the_latch():
    tables = CurrentTables(LFP)
    run(tables, min_cell=2.8)
    inputs = TableInputs(3.3, 3.3, None, None, NO_CAP, NO_CAP, missing="b has no valid cell voltage")
    _, dcl = tables.update(inputs)
    assert tables.latch is Latch.CUT
    assert dcl.value == 0.0 and "b has no valid cell voltage" in dcl.reason
    # Before any cut-off, a partial reading may still cut but not decide that all is well.
    fresh = CurrentTables(LFP)
    fresh.update(TableInputs(3.3, 3.3, None, None, NO_CAP, NO_CAP, missing="b"))
    assert fresh.latch is Latch.UNKNOWN
    fresh.update(TableInputs(3.3, 2.95, None, None, NO_CAP, NO_CAP, missing="b"))
    assert fresh.latch is Latch.CUT


def test_blocking_pack_zeroes_its_direction_only():
    ccl, dcl = run(CurrentTables(LFP), charge_blocked_by="pack2 (CCL 0)")
    assert ccl == Limit(0.0, "pack2 (CCL 0) blocks charging", "block")
    assert dcl.value == 200.0
    ccl, dcl = run(CurrentTables(LFP), discharge_blocked_by="pack1 (AllowToDischarge 0)")
    assert ccl.value == 200.0 and dcl.value == 0.0 and "pack1" in dcl.reason


def test_per_pack_share_cap_wins_when_lower():
    cap = Limit(80.0, "pack1 CCL 40 A at 50% share")
    ccl, _ = run(CurrentTables(LFP), max_cell=3.30, charge_cap=cap)
    assert ccl == cap
    ccl, _ = run(CurrentTables(LFP), max_cell=3.40, charge_cap=cap)
    assert ccl.value == pytest.approx(20.0) and "max cell 3.400 V: table 10 %" in ccl.reason


def test_reason_names_the_table_maximum():
    ccl, dcl = run(CurrentTables(LFP), max_cell=3.2, min_cell=3.2)
    assert ccl.reason == "max cell 3.200 V: table maximum"
    assert dcl.reason == "min cell 3.200 V: table maximum"


@pytest.mark.parametrize("knots, factors", [([3.0], [1.0]), ([3.0, 2.9], [1, 1]),
                                            ([3.0, 3.1], [1.0]), ([3.0, math.nan], [1, 1])])
def test_table_rejects_bad_shapes(knots, factors):
    with pytest.raises(ValueError):
        Table.of(knots, factors)


@given(
    st.lists(st.floats(2.0, 4.0), min_size=2, max_size=8, unique=True),
    st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8),
    st.floats(1.0, 5.0),
)
def test_interpolation_stays_between_neighbouring_factors(knots, factors, x):
    knots = sorted(knots)
    table = Table.of(knots, factors[: len(knots)])
    y = table(x)
    assert min(table.factors) - 1e-12 <= y <= max(table.factors) + 1e-12
    if x <= knots[0]:
        assert y == table.factors[0]
    elif x >= knots[-1]:
        assert y == table.factors[-1]
