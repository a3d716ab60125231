"""PassthroughCharge, the per-pack-share cap and the safety envelope (strategies/charge.py)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import pytest

from aggbatt.config import config_from_dict, default_config
from aggbatt.core.events import LimitSourceChanged
from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.strategies import ChargeLimits, CurrentResult, OfflinePack
from aggbatt.core.strategies.charge import (
    CHARGE,
    DISCHARGE,
    PassthroughCharge,
    apply_envelope,
    pack_shares,
    share_limit,
)
from tests.factories import snapshot, tick_context

DEFAULT = default_config()  # freshness.idle_current = 2 A: measured shares from 2 A bank current
NO_CURRENT = CurrentResult(None, None, "test")


def pack(pid: str, capacity: float | None = 100.0, current: float = 0.0, ccl: float = 100.0,
         dcl: float = 100.0, cvl: float = 55.2, **fields: Any) -> PackSnapshot:
    return snapshot(pid, name=f"Pack {pid}", voltage=53.0, current=current,
                    installed_capacity=capacity, ccl=ccl, dcl=dcl, cvl=cvl, **fields)


ctx = partial(tick_context, config=DEFAULT)


def limits(online: list[PackSnapshot], **kwargs: Any) -> ChargeLimits:
    context = ctx(online, **kwargs)
    return apply_envelope(PassthroughCharge(context.config).limits(context, NO_CURRENT), context)


def test_unequal_capacities_at_rest_use_capacity_shares() -> None:
    # A 100 Ah CCL 50 A, B 300 Ah CCL 100 A. Capacity shares 100/400 = 0.25 and 300/400 = 0.75.
    # Bank CCL = min(50 / 0.25, 100 / 0.75) = min(200, 133.33) = 133.33 A, set by B.
    # (min x N would give 50 x 2 = 100 A; at 133.33 A A carries 33.3 A <= 50, B 100 A <= 100.)
    out = limits([pack("A", 100.0, ccl=50.0), pack("B", 300.0, ccl=100.0)])
    assert out.ccl == pytest.approx(400.0 / 3.0)
    assert out.charge_reason == "Pack B CCL 100 A at 75% share"
    assert out.charge_source == "share"


def test_measured_share_wins_when_larger() -> None:
    # Charging 60 A: A carries 30 A (measured 0.5 > capacity 0.25), B 30 A (0.5 < 0.75).
    # Shares A 0.5, B 0.75. Bank CCL = min(50 / 0.5, 100 / 0.75) = min(100, 133.3) = 100 A, set by A.
    out = limits([pack("A", 100.0, current=30.0, ccl=50.0), pack("B", 300.0, current=30.0)])
    assert out.ccl == pytest.approx(100.0)
    assert out.charge_reason == "Pack A CCL 50 A at 50% share"


def test_measured_share_ignored_below_the_measurable_current() -> None:
    # Same split but a bank current of 0.5 + 0.5 = 1 A < idle_current 2 A: capacity shares only.
    out = limits([pack("A", 100.0, current=0.5, ccl=50.0), pack("B", 300.0, current=0.5)])
    assert out.ccl == pytest.approx(400.0 / 3.0)


def test_discharge_uses_the_discharge_split() -> None:
    # Discharging 50 A: A gives 40 A (0.8), B 10 A (0.2). Capacity shares 0.25 / 0.75.
    # Shares A 0.8, B 0.75. Bank DCL = min(100 / 0.8, 150 / 0.75) = min(125, 200) = 125 A.
    # The charge side sees no charging current: capacity shares, min(50/0.25, 100/0.75) = 133.3 A.
    online = [pack("A", 100.0, current=-40.0, ccl=50.0, dcl=100.0),
              pack("B", 300.0, current=-10.0, ccl=100.0, dcl=150.0)]
    out = limits(online)
    assert out.dcl == pytest.approx(125.0)
    assert out.discharge_reason == "Pack A DCL 100 A at 80% share"
    assert out.ccl == pytest.approx(400.0 / 3.0)


def test_circulating_current_can_make_a_share_above_one() -> None:
    # Bank +4 A, but A takes +10 A while B gives 6 A back: A really carries 10 / 4 = 2.5x the bank
    # current. Shares A max(2.5, 0.5) = 2.5, B max(0, 0.5) = 0.5. CCL = min(100 / 2.5, 100 / 0.5) = 40.
    shares = pack_shares([pack("A", current=10.0), pack("B", current=-6.0)], CHARGE, 2.0)
    assert shares == {"A": pytest.approx(2.5), "B": pytest.approx(0.5)}
    assert limits([pack("A", current=10.0), pack("B", current=-6.0)]).ccl == pytest.approx(40.0)


def test_unknown_capacity_is_treated_as_the_whole_bank() -> None:
    # A has no capacity: share 1. B and C share the known 400 Ah: 0.5 each.
    # CCL = min(60 / 1, 60 / 0.5, 60 / 0.5) = 60 A.
    online = [pack("A", None, ccl=60.0), pack("B", 200.0, ccl=60.0), pack("C", 200.0, ccl=60.0)]
    assert pack_shares(online, CHARGE, 2.0) == {"A": 1.0, "B": 0.5, "C": 0.5}
    assert limits(online).ccl == pytest.approx(60.0)


def test_identical_packs_give_min_times_n() -> None:
    # 4 identical packs at rest: each share 0.25, CCL = 25 / 0.25 = 100 A = min x N = 25 x 4.
    out = limits([pack(str(i), ccl=25.0) for i in range(4)])
    assert out.ccl == pytest.approx(100.0)


def test_share_limit_reports_the_setting_pack() -> None:
    result = share_limit([pack("A", ccl=80.0), pack("B", ccl=30.0)], CHARGE, 2.0)
    # shares 0.5 each: A allows 160 A, B 60 A
    assert result.pack is not None and result.pack.id == "B"
    assert (result.limit, result.share, result.pack_limit) == (pytest.approx(60.0), 0.5, 30.0)
    assert share_limit([], DISCHARGE, 2.0).limit is None


@pytest.mark.parametrize(("fields", "why"), [
    ({"ccl": 0.0}, "CCL 0"),
    ({"allow_charge": 0}, "AllowToCharge 0"),
    ({"blocking_charge": 1}, "blocking charge"),
])
def test_any_blocking_pack_stops_charging_at_once(fields: dict[str, Any], why: str) -> None:
    online = [pack("A", 1000.0), pack("B", 10.0, **fields), pack("C", 1000.0)]
    out = limits(online)
    assert out.ccl == 0.0
    assert out.charge_reason == f"Pack B blocks charging ({why})"
    assert out.charge_source == "block:B"
    # discharge is not affected: shares 1000/2010, 10/2010, 1000/2010; all DCL 100:
    # DCL = 100 / (1000 / 2010) = 201 A
    assert out.dcl == pytest.approx(201.0)


@pytest.mark.parametrize(("fields", "why"), [
    ({"dcl": 0.0}, "DCL 0"),
    ({"allow_discharge": 0}, "AllowToDischarge 0"),
    ({"blocking_discharge": 2}, "blocking discharge"),
])
def test_any_blocking_pack_stops_discharging(fields: dict[str, Any], why: str) -> None:
    out = limits([pack("A"), pack("B", **fields)])
    assert out.dcl == 0.0 and out.discharge_reason == f"Pack B blocks discharging ({why})"
    assert out.ccl == pytest.approx(200.0)  # shares 0.5 each, CCL 100 / 0.5


@pytest.mark.parametrize(("policy", "ccl_zero", "dcl_zero"), [
    ("degrade", False, False),
    ("block_charge", True, False),
    ("block", True, True),
])
def test_on_pack_lost(policy: str, ccl_zero: bool, dcl_zero: bool) -> None:
    config = config_from_dict({"freshness": {"on_pack_lost": policy}})
    lost = (OfflinePack("C", "Pack C", "service gone"),)
    out = limits([pack("A"), pack("B")], offline=lost, config=config)
    # degrade: the two remaining packs, shares 0.5 each: 100 / 0.5 = 200 A
    assert out.ccl == (0.0 if ccl_zero else pytest.approx(200.0))
    assert out.dcl == (0.0 if dcl_zero else pytest.approx(200.0))
    if ccl_zero:
        assert out.charge_reason == f"Pack C offline, on_pack_lost = {policy}"
    # nothing offline: no policy applies
    out = limits([pack("A"), pack("B")], config=config)
    assert out.ccl == pytest.approx(200.0) and out.dcl == pytest.approx(200.0)


def test_no_pack_online_makes_the_limits_invalid() -> None:
    out = limits([], offline=(OfflinePack("A", "Pack A", "service gone"),))
    assert (out.cvl, out.ccl, out.dcl) == (None, None, None)
    assert out.charge_reason == out.discharge_reason == "no pack online"


def test_cvl_is_the_lowest_pack_cvl() -> None:
    out = limits([pack("A", cvl=55.2), pack("B", cvl=54.4), pack("C", cvl=56.0)])
    assert out.cvl == 54.4


def test_envelope_caps_a_strategy_that_asks_too_much() -> None:
    # Shares 0.5 each, CCL 100 -> cap 200 A; DCL 100 -> cap 200 A.
    context = ctx([pack("A"), pack("B")])
    own = ChargeLimits(cvl=55.0, ccl=500.0, dcl=80.0, charge_reason="table", discharge_reason="table",
                       charge_source="own", discharge_source="own")
    out = apply_envelope(own, context)
    assert out.ccl == pytest.approx(200.0) and out.charge_reason == "Pack A CCL 100 A at 50% share"
    assert out.dcl == 80.0 and out.discharge_reason == "table"   # below the cap: kept
    assert out.cvl == 55.0                                         # CVL stays the strategy's


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, "100", True])
def test_envelope_replaces_unusable_strategy_values(bad: Any) -> None:
    context = ctx([pack("A", cvl=55.0), pack("B", cvl=54.0)])
    own = ChargeLimits(cvl=bad, ccl=bad, dcl=bad, charge_reason=None, discharge_reason=None)
    out = apply_envelope(own, context)
    assert out.cvl == 54.0                          # lowest pack CVL, never an invalid CVL
    assert out.ccl == pytest.approx(200.0) and out.dcl == pytest.approx(200.0)


def test_envelope_clamps_a_negative_limit_to_zero() -> None:
    context = ctx([pack("A")])
    own = ChargeLimits(cvl=55.0, ccl=-5.0, dcl=-1.0, charge_reason="x", discharge_reason="y")
    out = apply_envelope(own, context)
    assert (out.ccl, out.dcl) == (0.0, 0.0)


def test_envelope_blocks_whatever_the_strategy_says() -> None:
    context = ctx([pack("A"), pack("B", allow_charge=0)])
    own = ChargeLimits(cvl=55.0, ccl=50.0, dcl=50.0, charge_reason="table", discharge_reason="table")
    out = apply_envelope(own, context)
    assert out.ccl == 0.0 and out.charge_reason == "Pack B blocks charging (AllowToCharge 0)"


def test_absorption_hold_keeps_the_bank_charging_until_every_pack_floats() -> None:
    config = config_from_dict({"charge": {"passthrough": {"cvl_mode": "absorption_hold"}}})
    strategy = PassthroughCharge(config)
    charging = [pack("A", cvl=55.2, charge_mode="Absorption"), pack("B", cvl=55.2, charge_mode="Bulk")]
    strategy.limits(ctx(charging, config=config), NO_CURRENT)
    online = [pack("A", cvl=55.2, charge_mode="Absorption"), pack("B", cvl=53.6, charge_mode="Float")]
    # "min" would float the bank at 53.6 V while A still absorbs; the hold follows A.
    assert strategy.limits(ctx(online, config=config), NO_CURRENT).cvl == 55.2
    assert PassthroughCharge(DEFAULT).limits(ctx(online), NO_CURRENT).cvl == 53.6


def test_absorption_hold_says_once_which_rule_sets_the_cvl() -> None:
    config = config_from_dict({"charge": {"passthrough": {"cvl_mode": "absorption_hold"}}})
    strategy = PassthroughCharge(config)
    absorbing = [pack("A", cvl=56.8, charge_mode="Absorption"), pack("B", cvl=56.8, charge_mode="Bulk")]
    strategy.limits(ctx(absorbing, config=config), NO_CURRENT)
    strategy.limits(ctx(absorbing, config=config), NO_CURRENT)
    lowered = [pack("A", cvl=55.2, charge_mode="Absorption"), pack("B", cvl=56.8, charge_mode="Bulk")]
    first = strategy.limits(ctx(lowered, config=config), NO_CURRENT)
    assert first.cvl == 55.2
    assert first.events == (LimitSourceChanged("CVL", "Pack A lowers its CVL"),)
    assert str(first.events[0]) == "CVL now set by: Pack A lowers its CVL"
    again = strategy.limits(ctx(lowered, config=config), NO_CURRENT)
    assert again.cvl == 55.2 and again.events == ()


def test_unavailable_cvl_mode_is_refused() -> None:
    config = default_config()
    broken = config.model_copy(update={"charge": config.charge.model_copy(update={
        "passthrough": config.charge.passthrough.model_copy(update={"cvl_mode": "max"})})})
    with pytest.raises(ValueError, match="cvl_mode = 'max'"):
        PassthroughCharge(broken)


@pytest.mark.parametrize("capacity", [5e-324, 0.0, -5.0, 1e308, math.nan])
def test_an_unusable_capacity_counts_as_unknown_never_as_a_zero_share(capacity: float) -> None:
    # A snapshot built outside validation: a share of 0 would divide by zero; it counts as 1.
    # A: share 1, CCL 60 / 1 = 60 A; B (the only known capacity): share 1, 100 / 1 = 100 A.
    online = [pack("A", capacity, ccl=60.0), pack("B", 100.0, ccl=100.0)]
    assert pack_shares(online, CHARGE, 2.0)["A"] == 1.0
    assert limits(online).ccl == pytest.approx(60.0)
