"""The aggregate's own page paths: the per-pack subtree and the bank's decisions (pure)."""

from __future__ import annotations

from datetime import date

from aggbatt.core.engine import Engine, PackStatus, ServiceReading
from aggbatt.core.pages import MAX_PACKS, PACK_LEAVES, READING_INTERVAL, PackPages, info_values
from aggbatt.daemon.paths import spec_for
from tests.factories import SB, fast_config, reading


def status(n: int, **kw: object) -> PackStatus:
    base: dict[str, object] = dict(id=f"P{n}", name=f"Pack {n}", service=f"com.victronenergy.battery.p{n}",
                                   state="online", online=True, reason=None, age=0.4,
                                   voltage=53.2, current=-4.5, soc=71.0, cvl=55.2, ccl=100.0, dcl=150.0)
    base.update(kw)
    return PackStatus(**base)  # type: ignore[arg-type]


def test_each_pack_gets_a_slot_with_its_state_readings_limits_and_blocking():
    values = PackPages().values([
        status(0),
        status(1, state="offline", online=False, reason="no valid /Dc/0/Voltage", age=12.6, voltage=None,
               ccl=0.0, blocking_charge="CCL 0", holds="CCL 0, DCL 150 A, CVL 55.2 V"),
    ], 0.0)
    assert values["/Packs/Count"] == 2
    assert values["/Packs/0/Name"] == "Pack 0"
    assert values["/Packs/0/State"] == "online"
    assert values["/Packs/0/Reason"] is None
    assert values["/Packs/0/Dc/0/Voltage"] == 53.2
    assert values["/Packs/0/Info/MaxDischargeCurrent"] == 150.0
    assert values["/Packs/0/BlockingCharge"] == 0
    assert values["/Packs/0/BlockingReason"] == ""
    assert values["/Packs/1/State"] == "offline"
    assert values["/Packs/1/Reason"] == "no valid /Dc/0/Voltage"
    assert values["/Packs/1/DataAge"] == 13
    assert values["/Packs/1/Dc/0/Voltage"] is None
    assert values["/Packs/1/BlockingCharge"] == 1
    assert values["/Packs/1/BlockingDischarge"] == 0
    assert values["/Packs/1/BlockingReason"] == "charge: CCL 0"
    assert values["/Packs/1/Holds"] == "CCL 0, DCL 150 A, CVL 55.2 V"
    assert values["/Packs/0/Holds"] is None


def test_a_missing_pack_has_no_blocking_verdict():
    values = PackPages().values([status(0, service=None, state="offline", online=False,
                                        reason="service gone", age=None, voltage=None)], 0.0)
    assert values["/Packs/0/BlockingCharge"] is None
    assert values["/Packs/0/BlockingReason"] is None
    assert values["/Packs/0/DataAge"] is None


def test_moving_readings_are_refreshed_every_few_seconds_but_state_and_limits_at_once():
    pages = PackPages()
    pages.values([status(0, voltage=53.20, current=4.0, age=0.2)], 10.0)
    soon = pages.values([status(0, voltage=53.23, current=4.3, age=1.1, ccl=80.0)], 11.0)
    assert soon["/Packs/0/Dc/0/Voltage"] == 53.20            # held: a person reads this page
    assert soon["/Packs/0/Dc/0/Current"] == 4.0
    assert soon["/Packs/0/DataAge"] == 0
    assert soon["/Packs/0/Info/MaxChargeCurrent"] == 80.0    # a limit goes out at once
    later = pages.values([status(0, voltage=53.25, current=4.5, age=0.4)], 10.0 + READING_INTERVAL)
    assert later["/Packs/0/Dc/0/Voltage"] == 53.25
    offline = pages.values([status(0, state="offline", online=False, reason="service gone",
                                   service=None, voltage=None, current=None, age=None)],
                           11.0 + READING_INTERVAL)
    assert offline["/Packs/0/Dc/0/Voltage"] is None           # a new state shows its readings at once
    other = pages.values([status(7, voltage=51.0)], 12.0 + READING_INTERVAL)
    assert other["/Packs/0/Dc/0/Voltage"] == 51.0             # another pack in the slot: its own


def test_slots_are_bounded_and_a_slot_once_used_turns_invalid_instead_of_freezing():
    pages = PackPages()
    many = pages.values([status(n) for n in range(MAX_PACKS + 3)], 0.0)
    assert many["/Packs/Count"] == MAX_PACKS
    assert f"/Packs/{MAX_PACKS}/Name" not in many
    fewer = pages.values([status(0)], 1.0)
    assert fewer["/Packs/Count"] == 1
    assert all(fewer[f"/Packs/{MAX_PACKS - 1}/{leaf}"] is None for leaf in PACK_LEAVES)
    assert fewer["/Packs/1/Name"] is None


def test_every_page_path_has_a_declared_type():
    paths = PackPages().values([status(0)], 0.0)
    paths.update(info_values(current_source="bms_sum", soc_strategy="bms_average",
                             charge_strategy="passthrough", balancing=None, next_due=None,
                             feedin_guard=None))
    for path in paths:
        assert spec_for(path, None).kind is not None, path
    assert spec_for("/Packs/3/Dc/0/Voltage", None).kind is float
    assert spec_for("/Packs/3/BlockingCharge", None).kind is int


def test_balancing_record_and_guard_are_shown_only_for_the_own_charge_strategy():
    own = info_values(current_source="victron", soc_strategy="coulomb_counter", charge_strategy="own",
                      balancing={"last_balancing": None, "phase": "raising"},
                      next_due=date(2026, 12, 2), feedin_guard="holding")
    assert own["/Aggbatt/Balancing/Last"] == "never"
    assert own["/Aggbatt/Balancing/Phase"] == "raising"
    assert own["/Aggbatt/Balancing/NextDue"] == "2026-12-02"
    assert own["/Aggbatt/FeedInGuard"] == "holding"
    passthrough = info_values(current_source="bms_sum", soc_strategy="bms_average",
                              charge_strategy="passthrough", balancing=None, next_due=None,
                              feedin_guard=None)
    assert passthrough["/Aggbatt/Balancing/Last"] is None
    assert passthrough["/Aggbatt/FeedInGuard"] is None
    assert passthrough["/Aggbatt/CurrentSource"] == "bms_sum"


def pack_reading(n: int, **values: object) -> ServiceReading:
    return reading(f"{SB}p{n}", {
        "/ProductName": "SerialBattery(Jkbms)", "/Serial": f"S{n}", "/CustomName": f"Pack {n}",
        "/Dc/0/Voltage": 53.0, "/Dc/0/Current": 2.0, "/Soc": 60.0,
        "/Info/MaxChargeVoltage": 55.2, "/Info/MaxChargeCurrent": 100.0,
        "/Info/MaxDischargeCurrent": 100.0,
    }, **values)


def test_the_engine_publishes_the_pack_subtree_and_the_fail_safe_clears_it():
    engine = Engine(fast_config())
    result = engine.tick(0.1, [pack_reading(0), pack_reading(1, **{"/Io/AllowToDischarge": 0})])
    values = result.values
    assert values["/Packs/Count"] == 2
    assert values["/Packs/0/Id"] == "S0"
    assert values["/Packs/1/BlockingDischarge"] == 1
    assert values["/Packs/1/BlockingReason"] == "discharge: AllowToDischarge 0"
    safe = engine.fail_safe(0.2, [], RuntimeError("boom")).values
    assert safe["/Packs/Count"] == 0
    assert safe["/Packs/0/Id"] is None
