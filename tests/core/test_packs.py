"""packs.py: which battery services are packs and how each is identified."""

from __future__ import annotations

from functools import partial
from typing import Any

from aggbatt.config import config_from_dict, default_config
from aggbatt.core.events import Event, PackIdChanged, PackIdFlapping, PackIdShared, PackIdTaken
from aggbatt.core.packs import PackDirectory, PackRules, base_id, why_not_a_pack
from aggbatt.core.snapshot import ServiceReading
from tests import factories
from tests.factories import ABSENT, SB

# A serialbattery pack that publishes its limits; each test adds paths or takes them away (ABSENT).
JKBMS: dict[str, Any] = {
    "/ProductName": "SerialBattery(Jkbms) 1234 @ ttyUSB0",
    "/Info/MaxChargeVoltage": 55.2,
    "/Info/MaxChargeCurrent": 100.0,
    "/Info/MaxDischargeCurrent": 100.0,
}
reading = partial(factories.reading, values=JKBMS)
RULES = PackRules.from_config(default_config())


def test_default_rules_come_from_the_config() -> None:
    assert RULES.own_service == "com.victronenergy.battery.aggregate"
    assert RULES.product_name_contains == ("SerialBattery",)
    assert RULES.include == frozenset() and RULES.exclude == frozenset()


def test_a_serialbattery_service_is_a_pack() -> None:
    assert why_not_a_pack(reading(SB + "ttyUSB0"), RULES) is None


def test_invalid_limits_still_make_a_pack() -> None:
    # A pack that lost its BMS link stays a pack (and goes offline) instead of vanishing from the count.
    pack = reading(SB + "ttyUSB0", Info__MaxChargeVoltage=None, Info__MaxChargeCurrent=None,
                   Info__MaxDischargeCurrent=None)
    assert why_not_a_pack(pack, RULES) is None


def test_what_is_never_a_pack() -> None:
    assert why_not_a_pack(reading("com.victronenergy.battery.aggregate"), RULES) == "our own service"
    assert why_not_a_pack(reading("com.victronenergy.solarcharger.ttyS1"), RULES) == "not a battery service"
    shunt = reading(SB + "ttyS2", ProductName="SmartShunt 500A/50mV")
    assert "shunt" in why_not_a_pack(shunt, RULES)  # type: ignore[operator]
    no_limits = reading(SB + "ttyS3", Info__MaxChargeVoltage=ABSENT, Info__MaxChargeCurrent=ABSENT,
                        Info__MaxDischargeCurrent=ABSENT)
    assert why_not_a_pack(no_limits, RULES) == "publishes no charge limits (not a BMS)"
    other = reading(SB + "socketcan_can0", ProductName="Pylontech battery")
    assert why_not_a_pack(other, RULES) == "product name does not match"
    garbage_name = reading(SB + "ttyUSB4", ProductName=["SerialBattery"])
    assert why_not_a_pack(garbage_name, RULES) == "product name does not match"


def test_a_shunt_stays_out_even_when_included() -> None:
    rules = PackRules.from_config(config_from_dict({"discovery": {"include": [SB + "ttyS2"]}}))
    shunt = reading(SB + "ttyS2", ProductName="SmartShunt 500A/50mV")
    assert why_not_a_pack(shunt, rules) is not None


def test_include_lists_the_only_packs() -> None:
    rules = PackRules.from_config(config_from_dict(
        {"discovery": {"include": [SB + "socketcan_can0", "SER-2", "Garage"]}}))
    can = reading(SB + "socketcan_can0", ProductName="Pylontech battery")
    assert why_not_a_pack(can, rules) is None                       # by service name
    assert why_not_a_pack(reading(SB + "a", Serial="SER-2"), rules) is None
    assert why_not_a_pack(reading(SB + "b", CustomName="Garage"), rules) is None
    assert why_not_a_pack(reading(SB + "c", Serial="SER-3"), rules) == "not in include"


def test_exclude_by_service_serial_or_custom_name() -> None:
    rules = PackRules.from_config(config_from_dict(
        {"discovery": {"exclude": [SB + "ttyUSB9", "SER-9", "Spare"]}}))
    assert why_not_a_pack(reading(SB + "ttyUSB9"), rules) == "excluded"
    assert why_not_a_pack(reading(SB + "a", Serial="SER-9"), rules) == "excluded"
    assert why_not_a_pack(reading(SB + "b", CustomName="Spare"), rules) == "excluded"
    assert why_not_a_pack(reading(SB + "c", Serial="SER-1"), rules) is None


def test_identity_serial_then_custom_name_then_service() -> None:
    assert base_id(reading(SB + "a", Serial="SER-1", CustomName="Pack A")) == "SER-1"
    assert base_id(reading(SB + "a", Serial="  ", CustomName="Pack A")) == "Pack A"
    assert base_id(reading(SB + "a", Serial=None, CustomName=7)) == SB + "a"


def test_same_serial_under_a_new_service_name_is_the_same_pack() -> None:
    directory = PackDirectory(RULES)
    before, _ = directory.identify([reading(SB + "ttyUSB0", Serial="SER-1", CustomName="Pack A")])
    after, _ = directory.identify([reading(SB + "ttyUSB3", Serial="SER-1", CustomName="Pack A")])
    assert [p.id for p in before] == [p.id for p in after] == ["SER-1"]
    assert after[0].name == "Pack A" and after[0].reading.service == SB + "ttyUSB3"


def test_two_packs_with_the_same_serial_are_both_kept() -> None:
    directory = PackDirectory(RULES)
    packs, events = directory.identify([
        reading(SB + "ttyUSB1", Serial="0000"),
        reading(SB + "ttyUSB0", Serial="0000"),
        reading(SB + "ttyUSB2", Serial="SER-2"),
    ])
    assert [p.id for p in packs] == [f"0000@{SB}ttyUSB0", f"0000@{SB}ttyUSB1", "SER-2"]
    assert events == [PackIdShared("0000", (SB + "ttyUSB0", SB + "ttyUSB1"),
                                   (f"0000@{SB}ttyUSB0", f"0000@{SB}ttyUSB1"))]
    assert str(events[0]) == (f"2 packs report the same id '0000' ({SB}ttyUSB0, {SB}ttyUSB1): "
                              f"identifying them as 0000@{SB}ttyUSB0, 0000@{SB}ttyUSB1")
    assert directory.ambiguous == frozenset({"0000"})
    # Sticky: when one of the two is gone, the other keeps its id; no new event.
    packs, events = directory.identify([reading(SB + "ttyUSB1", Serial="0000")])
    assert [p.id for p in packs] == [f"0000@{SB}ttyUSB1"] and events == []
    assert directory.is_excluded_id("0000")


def test_ambiguity_is_recovered_from_persisted_ids() -> None:
    directory = PackDirectory(RULES, known=[f"0000@{SB}ttyUSB0", "SER-2"])
    packs, events = directory.identify([reading(SB + "ttyUSB0", Serial="0000")])
    assert [p.id for p in packs] == [f"0000@{SB}ttyUSB0"] and events == []


def test_garbage_readings_never_raise() -> None:
    directory = PackDirectory(RULES)
    weird = [
        ServiceReading(SB + "x", None, 0.0, 0.0),  # type: ignore[arg-type]
        ServiceReading(SB + "y", {"/ProductName": None}, 0.0, 0.0),
        ServiceReading(42, {}, 0.0, 0.0),  # type: ignore[arg-type]
    ]
    packs, events = directory.identify(weird)
    assert packs == [] and events == []


def test_a_renamed_pack_without_serial_keeps_its_service_and_follows_the_new_name() -> None:
    directory = PackDirectory(RULES)            # rename_after: readmit_after 5 s
    left = reading(SB + "ttyUSB0", Serial="", CustomName="Left")
    right = reading(SB + "ttyUSB0", Serial="", CustomName="Right")
    packs, _ = directory.identify([left], 0.0, ())
    assert [p.id for p in packs] == ["Left"]
    packs, events = directory.identify([right], 1.0, {"Left"})
    assert [(p.id, p.renamed_from) for p in packs] == [("Left", None)] and events == []
    packs, events = directory.identify([right], 6.0, {"Left"})      # held for 5 s
    assert [(p.id, p.renamed_from) for p in packs] == [("Right", "Left")]
    assert events == [PackIdChanged("Left", SB + "ttyUSB0", "Right")]
    packs, events = directory.identify([right], 7.0, {"Right"})
    assert [(p.id, p.renamed_from) for p in packs] == [("Right", None)] and events == []


def test_a_serial_that_changes_on_every_read_is_not_followed_and_is_told_once() -> None:
    directory = PackDirectory(RULES)
    all_events: list[Event] = []
    for t in range(25):
        packs, events = directory.identify([reading(SB + "ttyUSB0", Serial=f"S{t}")], float(t),
                                           {"S0"})
        assert [p.id for p in packs] == ["S0"]
        all_events += events
    assert all_events == [PackIdFlapping("S0", SB + "ttyUSB0", "S1", "S2", 5.0)]
    assert str(all_events[0]) == (f"S0: {SB}ttyUSB0 reports another id ('S1' -> 'S2') before the "
                                  "last one held for 5 s; it stays 'S0' until one id holds")


def test_a_rename_never_takes_the_id_of_another_known_pack() -> None:
    directory = PackDirectory(RULES)
    other = reading(SB + "ttyUSB1", Serial="", CustomName="Right")
    directory.identify([reading(SB + "ttyUSB0", Serial="", CustomName="Left"), other], 0.0)
    both = [reading(SB + "ttyUSB0", Serial="", CustomName="Right"), other]
    told: list[Event] = []
    for t in (1.0, 7.0, 8.0):                   # on the bus
        packs, events = directory.identify(both, t, {"Left", "Right"})
        assert sorted(p.id for p in packs) == ["Left", "Right"]
        told += events
    missing = [reading(SB + "ttyUSB0", Serial="", CustomName="Right")]
    for t in (9.0, 20.0):                       # known and missing: it may be back any time
        packs, events = directory.identify(missing, t, {"Left", "Right"})
        assert [p.id for p in packs] == ["Left"]
        told += events
    assert told == [PackIdTaken("Left", SB + "ttyUSB0", "Right")]


def test_a_serial_read_late_takes_over_the_known_pack_it_names() -> None:
    directory = PackDirectory(RULES)
    directory.identify([reading(SB + "ttyUSB0", Serial="")], 0.0, {"SER-1"})
    late = [reading(SB + "ttyUSB0", Serial="SER-1")]
    directory.identify(late, 1.0, {SB + "ttyUSB0", "SER-1"})
    packs, _ = directory.identify(late, 6.0, {SB + "ttyUSB0", "SER-1"})
    assert [(p.id, p.renamed_from) for p in packs] == [("SER-1", SB + "ttyUSB0")]


def test_a_service_that_comes_back_is_identified_afresh() -> None:
    directory = PackDirectory(RULES)
    directory.identify([reading(SB + "ttyUSB0", Serial="", CustomName="Left")], 0.0)
    again = reading(SB + "ttyUSB0", Serial="", CustomName="Right", last_change=3.0, appeared_at=3.0)
    packs, _ = directory.identify([again], 3.0, {"Left"})
    assert [(p.id, p.renamed_from) for p in packs] == [("Right", None)]
