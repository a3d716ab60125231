"""OwnCharge: monthly CVL, per-cell limits for mixed packs, balancing, dynamic CVL, limits, texts."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggbatt.config import config_from_dict
from aggbatt.core.events import DischargeCutOffKept, DynamicCvlChanged
from aggbatt.core.pack_paths import CHARGE_MODE
from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.strategies import CurrentResult, OfflinePack, TickContext
from aggbatt.core.strategies.charge import CHARGE, DISCHARGE, apply_envelope, bound
from aggbatt.core.strategies.current_tables import Table
from aggbatt.core.strategies.own_charge import OwnCharge
from tests.factories import cell_list, cell_snapshot, snapshot, tick_context

MONTHS = [3.30, 3.31, 3.32, 3.33, 3.34, 3.35, 3.36, 3.37, 3.38, 3.39, 3.40, 3.41]
OWN: dict[str, Any] = {
    "charge_cell_voltage": MONTHS, "max_cell_voltage": 3.50, "balancing_cell_voltage": 3.45,
    "balancing_repetition": 10, "cell_diff_max": 0.025, "balancing_tolerance": 0.05,
    "balancing_timeout": 3600.0,
}
RECENT = {"version": 1, "last_balancing": "2024-06-01", "phase": "idle", "phase_since": None}


def config(own: dict[str, Any] | None = None, feedin: dict[str, Any] | None = None):
    return config_from_dict({"charge": {"strategy": "own", "own": {**OWN, **(own or {})}},
                             "feedin": feedin or {}})


def pack(name: str, cells: int = 16, cell: float = 3.30, high: float | None = None,
         low: float | None = None, cvl: float = 58.0, ccl: float = 200.0, dcl: float = 200.0,
         capacity: float = 280.0, current: float = 0.0, **kw: Any) -> PackSnapshot:
    return cell_snapshot(name, cell_list(cells, cell, high, low), per_cell=False, digits=3,
                         current=current, cvl=cvl, ccl=ccl, dcl=dcl, installed_capacity=capacity,
                         **kw)


def ctx(cfg, packs, wall: datetime, now: float = 0.0,
        offline: tuple[OfflinePack, ...] = ()) -> TickContext:
    return tick_context(packs, now=now, config=cfg, offline=offline, wall=wall)


NO_CURRENT = CurrentResult(current=0.0, power=0.0, source="test")
CHARGING = CurrentResult(current=50.0, power=2700.0, source="test")


def strategy(cfg=None, record: dict | None = RECENT) -> OwnCharge:
    own = OwnCharge(cfg or config())
    own.load(record, None if record else "/state/balancing.json does not exist")
    return own


def test_monthly_cvl_changes_at_midnight_and_new_year():
    own = strategy(record={**RECENT, "last_balancing": "2024-01-25"})
    packs = [pack("a"), pack("b")]
    assert own.limits(ctx(own_cfg := config(), packs, datetime(2024, 1, 31, 23, 59)), NO_CURRENT).cvl \
        == pytest.approx(16 * 3.30)
    assert own.limits(ctx(own_cfg, packs, datetime(2024, 2, 1, 0, 0)), NO_CURRENT).cvl \
        == pytest.approx(16 * 3.31)
    own = strategy(record={**RECENT, "last_balancing": "2024-12-25"})
    assert own.limits(ctx(own_cfg, packs, datetime(2024, 12, 31, 23, 59)), NO_CURRENT).cvl \
        == pytest.approx(16 * 3.41)
    limits = own.limits(ctx(own_cfg, packs, datetime(2025, 1, 1, 0, 0)), NO_CURRENT)
    assert limits.cvl == pytest.approx(16 * 3.30)
    assert "January charge voltage 3.300 V/cell" in limits.values[CHARGE_MODE]


def test_mixed_cell_counts_keep_every_pack_within_its_per_cell_limit():
    own = strategy()
    limits = own.limits(ctx(config(), [pack("a16"), pack("b15", cells=15)], datetime(2024, 6, 5)),
                        NO_CURRENT)
    assert limits.cvl == pytest.approx(15 * 3.35)


def test_lfp_preset_months_above_max_cell_voltage_are_capped():
    lfp = config_from_dict({"charge": {"strategy": "own"}})  # default.toml: the LFP preset
    own = OwnCharge(lfp)
    own.load({**RECENT, "last_balancing": "2024-01-10"}, None)
    limits = own.limits(ctx(lfp, [pack("a"), pack("b")], datetime(2024, 1, 15)), NO_CURRENT)
    assert limits.cvl == pytest.approx(16 * 3.45)  # not 16 x 3.55
    assert "January charge voltage 3.550 V/cell capped at max cell voltage 3.450 V x 16 cells" \
        in limits.values[CHARGE_MODE]


def test_balancing_raises_when_the_bank_charges_and_persists_the_record():
    own = strategy(record=None)  # first start: never balanced, so due
    limits = own.limits(ctx(config(), [pack("a")], datetime(2024, 6, 5, 2)), NO_CURRENT)
    assert limits.cvl == pytest.approx(16 * 3.35)  # at night: not yet
    assert "balancing due: starts when the bank charges" in limits.values[CHARGE_MODE]
    limits = own.limits(ctx(config(), [pack("a")], datetime(2024, 6, 5, 9), now=1.0), CHARGING)
    assert limits.cvl == pytest.approx(16 * 3.45)
    assert "charging to the balancing voltage" in limits.values[CHARGE_MODE]
    assert own.last is not None and own.last.balancing_save is not None
    assert own.last.balancing_save["phase"] == "raising"
    limits = own.limits(ctx(config(), [pack("a")], datetime(2024, 6, 5, 9), now=2.0), NO_CURRENT)
    assert own.last.balancing_save is None  # unchanged: nothing to write
    # Goal: mean voltage >= 16 x (3.45 - 0.05) = 54.4 V with cells within 25 mV.
    own.limits(ctx(config(), [pack("a", cell=3.40)], datetime(2024, 6, 5, 11), now=3.0), CHARGING)
    assert own.last.balancing_save is not None and own.last.balancing_save["phase"] == "holding"


def test_garbage_balancing_state_is_reported_and_replaced():
    own = OwnCharge(config())
    own.load({"version": 1, "last_balancing": "soon", "phase": "idle"}, None)
    own.limits(ctx(config(), [pack("a")], datetime(2024, 6, 5)), NO_CURRENT)
    assert own.last is not None
    assert any("last_balancing 'soon'" in str(e) for e in own.last.events)
    assert own.last.balancing_save is not None


def test_a_local_phase_since_is_converted_and_saved_once_and_the_timeout_counts_real_time(berlin):
    own = OwnCharge(config())   # balancing_timeout 1 h
    # An older version saved the raise at 01:30 CET on the night the clocks go forward (00:30 UTC).
    own.load({**RECENT, "phase": "raising", "phase_since": "2026-03-29T01:30:00"}, None)
    start = datetime.fromisoformat("2026-03-29T00:30:00+00:00").timestamp()
    packs = [pack("a")]
    # 50 real minutes later, 03:20 CEST: the local clock says 110 min.
    local = datetime.fromtimestamp            # the daemon's wall clock as the strategy reads it
    limits = own.limits(ctx(config(), packs, local(start + 3000), now=0.0), CHARGING)
    assert limits.cvl == pytest.approx(16 * 3.45)
    assert own.last is not None and own.last.balancing_save is not None
    assert own.last.balancing_save["phase_since"] == "2026-03-29T00:30:00+00:00"
    assert any("converted to UTC" in str(e) for e in own.last.events)
    own.limits(ctx(config(), packs, local(start + 3599), now=599.0), CHARGING)
    assert own.last.balancing_save is None and own.last.events == ()
    limits = own.limits(ctx(config(), packs, local(start + 3600), now=600.0), CHARGING)
    assert limits.cvl == pytest.approx(16 * 3.32)     # given up after one real hour (March voltage)


def test_dynamic_cvl_lowers_and_asks_for_the_feedin_guard():
    own = strategy()
    limits = own.limits(ctx(config(), [pack("a", high=3.55), pack("b")], datetime(2024, 6, 5)),
                        NO_CURRENT)
    # Pack a: 15 x 3.30 + 3.55 = 53.05 V, 50 mV over -> 53.00 V (the target was 16 x 3.35 = 53.6).
    assert limits.cvl == pytest.approx(53.00)
    assert own.last is not None and own.last.feedin_wanted
    assert "a cell 3.550 V over 3.500 V" in own.last.feedin_reason
    assert [e for e in own.last.events if isinstance(e, DynamicCvlChanged)] == [
        DynamicCvlChanged(True, own.last.feedin_reason)]


def test_feedin_also_when_blocking_is_optional():
    blocked = [pack("a"), pack("b", ccl=0.0)]
    own = strategy()
    own.limits(ctx(config(), blocked, datetime(2024, 6, 5)), NO_CURRENT)
    assert own.last is not None and not own.last.feedin_wanted
    cfg = config(feedin={"also_when_blocking": True})
    own = strategy(cfg)
    own.limits(ctx(cfg, blocked, datetime(2024, 6, 5)), NO_CURRENT)
    assert own.last is not None and own.last.feedin_wanted and "b (CCL 0)" in own.last.feedin_reason


def test_current_limits_from_tables_and_share_caps_with_texts():
    own = strategy()
    # Max cell 3.40 V: LFP charge table factor 0.1 -> 20 A; packs allow far more.
    limits = own.limits(ctx(config(), [pack("a", high=3.40), pack("b")], datetime(2024, 6, 5)),
                        NO_CURRENT)
    assert limits.ccl == pytest.approx(20.0)
    assert limits.charge_reason == "max cell 3.400 V: table 10 %"
    assert limits.dcl == pytest.approx(200.0)
    # A pack derating itself to 30 A with a 50 % share: the bank may take 60 A, not the table's 200.
    limits = own.limits(ctx(config(), [pack("a", ccl=30.0), pack("b")], datetime(2024, 6, 5)),
                        NO_CURRENT)
    assert limits.ccl == pytest.approx(60.0)
    assert limits.charge_reason.startswith("a CCL 30 A")


def test_blocking_pack_makes_ccl_zero():
    own = strategy()
    limits = own.limits(ctx(config(), [pack("a", allow_charge=0), pack("b")], datetime(2024, 6, 5)),
                        NO_CURRENT)
    assert limits.ccl == 0.0 and "a" in limits.charge_reason


def test_dcl_cut_off_survives_invalid_cell_readings_and_a_low_pack_going_offline():
    own = strategy()
    cfg = config()
    wall = datetime(2024, 6, 5)
    low, high = pack("a", cell=3.0, low=2.85), pack("b", cell=3.3)
    assert own.limits(ctx(cfg, [low, high], wall), NO_CURRENT).dcl == 0.0
    # a's cell readings turn invalid: b's healthy cells say nothing about a.
    blind = replace(low, min_cell_voltage=None, max_cell_voltage=None)
    limits = own.limits(ctx(cfg, [blind, high], wall, now=1.0), NO_CURRENT)
    assert limits.dcl == 0.0 and "a has no valid cell voltage" in limits.discharge_reason
    assert DischargeCutOffKept("a has no valid cell voltage") in limits.events
    # a drops out of the online set: still cut off until a is seen above the release voltage.
    offline = ctx(cfg, [high], wall, now=2.0, offline=(OfflinePack("a", "a", "gone"),))
    limits = own.limits(offline, NO_CURRENT)
    assert limits.dcl == 0.0 and "a (at the cut-off) is offline" in limits.discharge_reason
    # No cell reading at all keeps it too.
    limits = own.limits(ctx(cfg, [blind, replace(high, min_cell_voltage=None,
                                                 max_cell_voltage=None)], wall, now=3.0), NO_CURRENT)
    assert limits.dcl == 0.0
    recovered = pack("a", cell=3.3)
    assert own.limits(ctx(cfg, [recovered, high], wall, now=4.0), NO_CURRENT).dcl > 0.0


def test_a_pack_losing_its_cell_readings_keeps_the_charge_table_where_it_was():
    own = strategy()
    cfg = config()
    wall = datetime(2024, 6, 5)
    full, other = pack("a", cell=3.30, high=3.44), pack("b", cell=3.30)
    tapered = own.limits(ctx(cfg, [full, other], wall), CHARGING).ccl
    assert tapered < 50.0
    blind = replace(full, max_cell_voltage=None, min_cell_voltage=None)
    assert own.limits(ctx(cfg, [blind, other], wall, now=1.0), CHARGING).ccl == tapered
    offline = ctx(cfg, [other], wall, now=2.0, offline=(OfflinePack("a", "a", "gone"),))
    assert own.limits(offline, CHARGING).ccl == tapered
    # Forgotten by the user: only b counts.
    assert own.limits(ctx(cfg, [other], wall, now=3.0), CHARGING).ccl > tapered


def test_losing_a_packs_cell_count_or_the_pack_never_raises_the_cvl():
    own = strategy()
    cfg = config()
    wall = datetime(2024, 6, 5)
    p15, p16 = pack("a", cells=15, cell=3.45), pack("b", cells=16)
    assert own.limits(ctx(cfg, [p15, p16], wall), NO_CURRENT).cvl == pytest.approx(15 * 3.35)
    # a's count turns invalid: its own CVL (58 V) would allow 16 x 3.35 V for b.
    unknown = replace(p15, cells=None)
    assert own.limits(ctx(cfg, [unknown, p16], wall, now=1.0), NO_CURRENT).cvl \
        == pytest.approx(15 * 3.35)
    offline = ctx(cfg, [p16], wall, now=2.0, offline=(OfflinePack("a", "a", "gone"),))
    assert own.limits(offline, NO_CURRENT).cvl == pytest.approx(15 * 3.35)
    # Forgotten by the user: b alone.
    assert own.limits(ctx(cfg, [p16], wall, now=3.0), NO_CURRENT).cvl == pytest.approx(16 * 3.35)


def test_pack_without_cell_count_caps_with_its_own_cvl():
    own = strategy()
    anon = snapshot("can", cvl=52.0, ccl=100.0, dcl=100.0, voltage=52.5, current=0.0)
    limits = own.limits(ctx(config(), [pack("a"), anon], datetime(2024, 6, 5)), NO_CURRENT)
    assert limits.cvl == 52.0
    assert "can: cell count unknown" in limits.values[CHARGE_MODE]


def test_a_cell_count_that_does_not_fit_the_pack_voltage_is_not_trusted():
    own = strategy()
    cfg = config()
    wall = datetime(2024, 6, 5)
    # A 16-cell pack at 53 V whose BMS is configured for 24 cells: 2.21 V per cell.
    liar = replace(pack("a", cell=53.0 / 16, cvl=55.2), cells=24)
    limits = own.limits(ctx(cfg, [liar], wall), NO_CURRENT)
    assert limits.cvl == 55.2
    assert "a: cell count does not fit its voltage" in limits.values[CHARGE_MODE]
    said = [str(e) for e in limits.events if "cell count 24 not used" in str(e)]
    assert len(said) == 1 and "2.21 V per cell" in said[0]
    # Said once, not every tick.
    again = own.limits(ctx(cfg, [liar], wall, now=1.0), NO_CURRENT)
    assert again.cvl == 55.2 and not any("not used" in str(event) for event in again.events)
    # A voltage swinging in and out of the range does not repeat it either.
    fits = replace(liar, voltage=70.0, voltages_sum=70.0, min_cell_voltage=2.917,
                   max_cell_voltage=2.917)
    assert own.limits(ctx(cfg, [fits], wall, now=2.0), NO_CURRENT).cvl == pytest.approx(24 * 3.35)
    swing = own.limits(ctx(cfg, [liar], wall, now=3.0), NO_CURRENT)
    assert not any("not used" in str(event) for event in swing.events)
    # Inside the configured range but not matching the pack's own cell readings (17 for 16).
    near = replace(pack("b", cell=3.30, cvl=55.2), cells=17)
    limits = strategy().limits(ctx(cfg, [near], wall), NO_CURRENT)
    assert limits.cvl == 55.2
    assert any("its cells read 3.300-3.300 V" in str(event) for event in limits.events)
    # Without cell readings the configured range alone judges; /Voltages/Sum counts as well.
    bare = replace(pack("c", cell=3.30, cvl=55.2), cells=24, min_cell_voltage=None,
                   max_cell_voltage=None, voltage=None)
    limits = strategy().limits(ctx(cfg, [bare], wall), NO_CURRENT)
    assert limits.cvl == 55.2 and any("cell sum 52.80 V" in str(event) for event in limits.events)
    # A count that fits is used as before.
    honest = pack("d", cell=3.30, cvl=60.0)
    assert strategy().limits(ctx(cfg, [honest], wall), NO_CURRENT).cvl == pytest.approx(16 * 3.35)


def test_without_wall_clock_the_strategy_refuses():
    own = strategy()
    bad = tick_context([pack("a")], config=config())
    with pytest.raises(ValueError):
        own.limits(bad, NO_CURRENT)


# ----- properties ---------------------------------------------------------------------------------

_PACK = st.builds(
    lambda cells, base, spread, ccl, dcl, cap, cur: (cells, base, spread, ccl, dcl, cap, cur),
    st.integers(4, 24), st.floats(2.5, 3.7), st.floats(0.0, 0.3), st.floats(0.0, 300.0),
    st.floats(0.0, 300.0), st.floats(10.0, 500.0), st.floats(-100.0, 100.0),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_PACK, min_size=1, max_size=5), st.integers(1, 12), st.booleans(),
       st.lists(st.floats(0.0, 5.0), min_size=1, max_size=4), st.sampled_from([NO_CURRENT, CHARGING]))
def test_limits_never_exceed_cell_limits_tables_or_share_caps(specs, month, balancing_due, gaps,
                                                              bank_current):
    cfg = config()
    p = cfg.charge.own
    own = strategy(record=None if balancing_due else RECENT)
    charge_table = Table.of(p.cell_charge_voltages, p.cell_charge_factors)
    discharge_table = Table.of(p.cell_discharge_voltages, p.cell_discharge_factors)
    # Each pack's own CVL keeps to the per-cell cap too: it is what caps the bank while a pack's
    # cell count does not fit its voltage (a deep discharge below the configured cell range).
    packs = [pack(f"p{i}", cells=cells, cell=base, high=base + spread, low=max(1.0, base - spread),
                  ccl=ccl, dcl=dcl, capacity=cap, current=cur, cvl=cells * p.max_cell_voltage)
             for i, (cells, base, spread, ccl, dcl, cap, cur) in enumerate(specs)]
    now = 0.0
    for gap in gaps:
        now += gap
        context = ctx(cfg, packs, datetime(2024, month, 10, 12), now=now)
        limits = apply_envelope(own.limits(context, bank_current), context)
        assert limits.cvl is not None
        for pk in packs:
            assert limits.cvl <= pk.cells * p.max_cell_voltage + 1e-9
        high = max(pk.max_cell_voltage for pk in packs)
        low = min(pk.min_cell_voltage for pk in packs)
        assert limits.ccl <= p.max_charge_current * charge_table(high) + 1e-9
        assert limits.dcl <= p.max_discharge_current * discharge_table(low) + 1e-9
        assert limits.ccl <= bound(context, CHARGE).cap + 1e-9
        assert limits.dcl <= bound(context, DISCHARGE).cap + 1e-9
        if low <= p.min_cell_voltage:
            assert limits.dcl == 0.0
