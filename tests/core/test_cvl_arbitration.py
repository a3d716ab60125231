"""Pass-through CVL arbitration: min and absorption_hold."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.strategies.cvl_arbitration import AbsorptionHold, PackClass, classify, min_cvl
from tests.factories import snapshot


def pack(name: str, cvl: float | None, mode: str | None, cells: int = 8,
         cell: float = 3.3) -> PackSnapshot:
    """A pack whose cell count agrees with its voltage and cell readings."""
    return snapshot(name, cvl=cvl, charge_mode=mode, cells=cells, voltage=round(cells * cell, 3),
                    min_cell_voltage=cell, max_cell_voltage=cell)


def test_classify_serialbattery_texts():
    assert classify("Float") is PackClass.FLOAT
    assert classify("Float Transition") is PackClass.TRANSITION
    assert classify("Float Transition (Linear Mode)") is PackClass.TRANSITION
    assert classify("Float │ Linear Mode") is PackClass.FLOAT
    assert classify("Bulk & SoC Reset") is PackClass.CHARGING
    assert classify("Absorption (Linear Mode)") is PackClass.CHARGING
    assert classify("Keep always max voltage") is PackClass.CHARGING
    assert classify(None) is PackClass.UNKNOWN
    assert classify("  ") is PackClass.UNKNOWN


def test_min_mode():
    result = min_cvl([pack("a", 28.4, "Bulk"), pack("b", 27.0, "Float")])
    assert result.cvl == 27.0 and "b" in result.reason
    assert min_cvl([pack("a", None, "Bulk")]).cvl is None


def test_bank_stays_in_absorption_while_one_pack_still_absorbs():
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 28.4, "Absorption"), pack("b", 28.4, "Absorption")])
    result = hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 28.4, "Absorption")])
    assert result.cvl == 28.4 and "b still charging" in result.reason


def test_after_a_restart_packs_cap_with_their_own_cvl_until_their_next_phase():
    # Nothing shows whether a or c lowered their CVL before the restart: neither is held higher.
    hold = AbsorptionHold()
    result = hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 28.4, "Absorption")])
    assert result.cvl == 27.0 and "a: float phase not seen from its start" in result.reason
    result = hold.arbitrate([pack("c", 27.6, "Bulk"), pack("b", 28.4, "Absorption")])
    assert result.cvl == 27.6 and "c: charging phase not seen from its start" in result.reason
    # a phase change seen while the pack is offline or without a charge mode proves nothing either
    hold.arbitrate([pack("c", 27.6, "Bulk"), pack("b", 28.4, "Absorption")])
    hold.arbitrate([pack("c", 27.6, None), pack("b", 28.4, "Absorption")])
    result = hold.arbitrate([pack("c", 27.0, "Float"), pack("b", 28.4, "Absorption")])
    assert result.cvl == 27.0 and "not seen from its start" in result.reason


def test_issue_169_soc_reset_packs_are_not_held_at_the_third_packs_voltage():
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 27.0, "Float"), pack("c", 27.0, "Float")])
    packs = [pack("a", 28.0, "Bulk & SoC Reset"), pack("b", 28.0, "Bulk & SoC Reset"),
             pack("c", 27.6, "Bulk")]
    assert hold.arbitrate(packs).cvl == 28.0


def test_all_in_float_follows_the_lowest():
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 28.4, "Absorption"), pack("b", 28.4, "Absorption")])
    result = hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 27.2, "Float")])
    assert result.cvl == 27.0 and "float" in result.reason


def test_a_pack_lowering_its_cvl_always_wins():
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 28.4, "Absorption"), pack("b", 28.4, "Absorption")])
    hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 28.4, "Absorption")])
    # b's cell over-voltage protection lowers its CVL while it still says Absorption.
    result = hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 28.1, "Absorption")])
    assert result.cvl == 28.1
    # A floating pack held high by the bank protects a high cell: it wins over b's absorption.
    result = hold.arbitrate([pack("a", 26.5, "Float"), pack("b", 28.4, "Absorption")])
    assert result.cvl == 26.5 and "a lowers its CVL" in result.reason


def test_the_reference_keep_max_cvl_mistake_is_not_made():
    # KEEP_MAX_CVL took the max as soon as any pack floats, overriding b's reduction.
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 28.4, "Absorption"), pack("b", 28.4, "Absorption")])
    result = hold.arbitrate([pack("a", 27.6, "Float"), pack("b", 27.9, "Absorption")])
    assert result.cvl == 27.9


def test_unknown_charge_mode_caps_with_its_own_cvl():
    hold = AbsorptionHold()
    result = hold.arbitrate([pack("can", 27.8, None), pack("b", 28.4, "Absorption")])
    assert result.cvl == 27.8 and "no charge mode" in result.reason


def test_a_reduction_survives_the_pack_going_offline_and_an_invalid_mode():
    hold = AbsorptionHold()
    both = {"a", "b"}
    hold.arbitrate([pack("a", 56.8, "Absorption", 16), pack("b", 56.8, "Absorption", 16)], both)
    assert hold.arbitrate([pack("a", 55.2, "Absorption", 16),
                           pack("b", 56.8, "Absorption", 16)], both).cvl == 55.2
    # a is offline for a while (an invalid reading), then back with its reduced CVL.
    assert hold.arbitrate([pack("b", 56.8, "Absorption", 16)], both).cvl == 56.8
    result = hold.arbitrate([pack("a", 55.2, "Absorption", 16), pack("b", 56.8, "Absorption", 16)],
                            both)
    assert result.cvl == 55.2 and "a lowers its CVL" in result.reason
    # One tick without a charge mode does not reset what was seen either.
    hold.arbitrate([pack("a", 55.2, None, 16), pack("b", 56.8, "Absorption", 16)], both)
    assert hold.arbitrate([pack("a", 55.2, "Absorption", 16),
                           pack("b", 56.8, "Absorption", 16)], both).cvl == 55.2
    # Forgotten by the user: a pack coming back is new (its phase not seen from its start).
    hold.arbitrate([pack("b", 56.8, "Absorption", 16)], {"b"})
    result = hold.arbitrate([pack("a", 55.2, "Absorption", 16), pack("b", 56.8, "Absorption", 16)],
                            both)
    assert result.cvl == 55.2 and "not seen from its start" in result.reason


def test_mixed_cell_counts_are_held_per_cell():
    hold = AbsorptionHold()
    p15 = pack("p15", 15 * 3.55, "Absorption", 15)
    p16 = pack("p16", 16 * 3.55, "Absorption", 16)
    result = hold.arbitrate([p15, p16])
    # In bank volts the 16-cell pack's 56.8 V would be 3.79 V per cell for the 15-cell pack.
    assert result.cvl == pytest.approx(15 * 3.55)
    assert "3.550 V per cell" in result.reason
    # The 15-cell pack finished: it is still held at most at 3.55 V per cell.
    result = hold.arbitrate([pack("p15", 15 * 3.4, "Float", 15), p16])
    assert result.cvl == pytest.approx(15 * 3.55)


def test_without_a_trusted_cell_count_no_pack_gets_more_than_its_own_cvl():
    hold = AbsorptionHold()
    liar = replace(pack("p15", 15 * 3.55, "Absorption", 15), cells=16)  # count disagrees
    p16 = pack("p16", 16 * 3.55, "Absorption", 16)
    result = hold.arbitrate([liar, p16])
    assert result.cvl == pytest.approx(15 * 3.55) and "own charge CVL" in result.reason
    hold.arbitrate([replace(liar, cvl=15 * 3.4, charge_mode="Float"), p16])
    result = hold.arbitrate([replace(liar, cvl=15 * 3.4, charge_mode="Float"), p16])
    assert result.cvl == pytest.approx(15 * 3.55)


def test_float_transition_ramp_is_not_a_protective_reduction():
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 28.4, "Absorption"), pack("b", 28.4, "Absorption")])
    # serialbattery ramps a's CVL down towards float; b keeps absorbing at 28.4.
    for cvl in (28.39, 28.3, 28.0, 27.6):
        result = hold.arbitrate([pack("a", cvl, "Float Transition"), pack("b", 28.4, "Absorption")])
        assert result.cvl == 28.4 and "b still charging" in result.reason
    # In plain Float a further drop is a protection again.
    hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 28.4, "Absorption")])
    assert hold.arbitrate([pack("a", 26.8, "Float"), pack("b", 28.4, "Absorption")]).cvl == 26.8


def test_no_pack_cvl():
    assert AbsorptionHold().arbitrate([pack("a", None, "Bulk")]).cvl is None
