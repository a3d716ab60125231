"""Pass-through CVL arbitration: min and absorption_hold."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggbatt.model import PackSnapshot
from aggbatt.strategies.cvl_arbitration import AbsorptionHold, PackClass, classify, min_cvl


def pack(name: str, cvl: float | None, mode: str | None) -> PackSnapshot:
    return PackSnapshot(id=name, name=name, service=f"com.victronenergy.battery.{name}",
                        cvl=cvl, charge_mode=mode)


def test_classify_serialbattery_texts():
    assert classify("Float") is PackClass.FLOAT
    assert classify("Float Transition") is PackClass.FLOAT
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
    result = hold.arbitrate([pack("a", 27.0, "Float"), pack("b", 28.4, "Absorption")])
    assert result.cvl == 28.4 and "b still charging" in result.reason


def test_issue_169_soc_reset_packs_are_not_held_at_the_third_packs_voltage():
    hold = AbsorptionHold()
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


def test_memory_forgets_packs_that_leave():
    hold = AbsorptionHold()
    hold.arbitrate([pack("a", 28.4, "Absorption"), pack("b", 28.4, "Absorption")])
    hold.arbitrate([pack("b", 28.4, "Absorption")])
    # a returns with a lower CVL: it is new again, not "lowering".
    assert hold.arbitrate([pack("a", 28.0, "Absorption"), pack("b", 28.4, "Absorption")]).cvl == 28.4


def test_no_pack_cvl():
    assert AbsorptionHold().arbitrate([pack("a", None, "Bulk")]).cvl is None


_MODES = st.sampled_from(["Bulk", "Absorption", "Float", "Float Transition", None])


@given(st.lists(st.lists(st.tuples(st.floats(20.0, 60.0), _MODES), min_size=3, max_size=3),
                min_size=1, max_size=20))
def test_never_above_the_highest_pack_cvl_and_never_above_a_reducing_pack(history):
    hold = AbsorptionHold()
    peaks: dict[str, tuple[str, float]] = {}
    for tick in history:
        packs = [pack(f"p{i}", cvl, mode) for i, (cvl, mode) in enumerate(tick)]
        result = hold.arbitrate(packs)
        assert result.cvl is not None
        assert result.cvl <= max(p.cvl for p in packs if p.cvl is not None)
        for p in packs:
            cls = classify(p.charge_mode).value
            before = peaks.get(p.id)
            peak = max(before[1], p.cvl) if before and before[0] == cls else p.cvl
            peaks[p.id] = (cls, peak)
            if p.cvl < peak - 0.01 or cls == "unknown":
                assert result.cvl <= p.cvl
