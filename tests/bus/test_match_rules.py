"""bus/match_rules.py: how the PropertiesChanged rules of one service are planned, without a bus."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aggbatt.bus.match_rules import RulePlan, plan_rules, rules_for

# What a dbus-serialbattery pack publishes (victron-contract §4.1), with 24 cells.
SB_ROOT = ("/DeviceInstance", "/ProductId", "/ProductName", "/FirmwareVersion", "/HardwareVersion",
           "/Family", "/Connected", "/CustomName", "/Serial", "/DeviceName", "/Manufacturer",
           "/State", "/Mode", "/DeviceState", "/ErrorCode", "/ConnectionInformation", "/Soc", "/Soh",
           "/Capacity", "/InstalledCapacity", "/ConsumedAmphours", "/TimeToGo", "/CurrentAvg",
           "/Balancing", "/Heating", "/JsonData")
SB_DC = ("/Dc/0/Voltage", "/Dc/0/Current", "/Dc/0/Power", "/Dc/0/Temperature", "/Dc/0/MidVoltage",
         "/Dc/0/MidVoltageDeviation")
SB_INFO = ("/Info/BatteryLowVoltage", "/Info/MaxChargeVoltage", "/Info/MaxChargeCurrent",
           "/Info/MaxDischargeCurrent", "/Info/ChargeMode", "/Info/MaxChargeCellVoltage",
           "/Info/ChargeModeDebug", "/Info/ChargeModeDebugFloat", "/Info/ChargeModeDebugBulk",
           "/Info/ChargeLimitation", "/Info/DischargeLimitation", "/Info/HeatingCurrent",
           "/Info/HeatingPower", "/Info/HeatingTemperatureStart", "/Info/HeatingTemperatureStop")
SB_SYSTEM = ("/System/NrOfCellsPerBattery", "/System/NrOfModulesOnline",
             "/System/NrOfModulesBlockingCharge", "/System/NrOfModulesBlockingDischarge",
             "/System/MinCellVoltage", "/System/MaxCellVoltage", "/System/MinVoltageCellId",
             "/System/MaxVoltageCellId", "/System/MinCellTemperature", "/System/MaxCellTemperature",
             "/System/MinTemperatureCellId", "/System/MaxTemperatureCellId",
             "/System/NrOfModulesOffline", "/System/MOSTemperature",
             *(f"/System/Temperature{n}" for n in range(1, 5)),
             *(f"/System/Temperature{n}Name" for n in range(1, 5)))
SB_IO = ("/Io/AllowToCharge", "/Io/AllowToDischarge", "/Io/AllowToBalance", "/Io/AllowToHeat")
SB_ALARMS = tuple(f"/Alarms/{a}" for a in (
    "LowVoltage", "HighVoltage", "LowCellVoltage", "HighCellVoltage", "LowSoc", "StateOfHealth",
    "HighChargeCurrent", "HighDischargeCurrent", "CellImbalance", "InternalFailure",
    "HighChargeTemperature", "LowChargeTemperature", "HighTemperature", "LowTemperature",
    "BmsCable", "HighInternalTemperature", "FuseBlown"))
SB_CELLS = tuple(f"/Voltages/Cell{n}" for n in range(1, 25))
SB_PATHS = frozenset((*SB_ROOT, *SB_DC, *SB_INFO, *SB_SYSTEM, *SB_IO, *SB_ALARMS, *SB_CELLS,
                      "/Voltages/Sum", "/Voltages/Diff", "/Mgmt/ProcessName", "/Mgmt/Connection",
                      *(f"/Balances/Cell{n}" for n in range(1, 25)),
                      "/History/ChargeCycles", "/History/TotalAhDrawn", "/Settings/HasSettings"))
# A representative wanted set (what the rules read of victron-contract §4.1): 54 paths.
WANTED_ROOT = ("/Soc", "/Capacity", "/InstalledCapacity", "/ConsumedAmphours", "/TimeToGo",
               "/Serial", "/CustomName", "/ProductName", "/Balancing", "/Connected", "/DeviceInstance")
WANTED = frozenset((*WANTED_ROOT, *SB_DC[:4], *SB_INFO[:5], *SB_SYSTEM[:12], *SB_IO[:3], *SB_ALARMS,
                    "/Voltages/Sum", "/Voltages/Diff"))


def test_plan_for_a_serialbattery_pack():
    assert len(WANTED) == 54
    plan = plan_rules(WANTED, SB_PATHS)
    # /Dc 4 wanted of 6, /Info 5 of 15, /System 12 of 22, /Io 3 of 4, /Alarms 17 of 17: all within
    # 3x. /Voltages holds 2 wanted next to 24 cells; the root is never a namespace.
    assert plan == RulePlan(frozenset({"/Dc", "/Info", "/System", "/Io", "/Alarms"}),
                            frozenset({*WANTED_ROOT, "/Voltages/Sum", "/Voltages/Diff"}))

    # serialbattery's optional /Info/Config/* makes /Info mostly unwanted: single rules again.
    config = {f"/Info/Config/Value{n}" for n in range(20)}
    plan = plan_rules(WANTED, SB_PATHS | config)
    assert plan.namespaces == {"/Dc", "/System", "/Io", "/Alarms"}
    assert plan.paths == {*WANTED_ROOT, *SB_INFO[:5], "/Voltages/Sum", "/Voltages/Diff"}

    # Wanted cells (up to 32, of which the pack has 24) share one rule.
    cells = {f"/Voltages/Cell{n}" for n in range(1, 33)}
    plan = plan_rules(WANTED | cells, SB_PATHS)
    assert plan.namespaces == {"/Dc", "/Info", "/System", "/Io", "/Alarms", "/Voltages"}
    assert plan.paths == set(WANTED_ROOT)


def test_plan_thresholds():
    def a(*numbers: int) -> set[str]:
        return {f"/A/{n}" for n in numbers}

    # Two wanted paths never make a namespace, three do when the sub-tree holds at most 9 paths.
    assert plan_rules(a(1, 2), a(1, 2)) == RulePlan(frozenset(), frozenset(a(1, 2)))
    assert plan_rules(a(1, 2, 3), a(*range(1, 10))).namespaces == {"/A"}
    assert plan_rules(a(1, 2, 3), a(*range(1, 11))).namespaces == set()
    # A namespace matches the path equal to it: that path needs no rule of its own.
    assert plan_rules(a(1, 2, 3) | {"/A"}, ()) == RulePlan(frozenset({"/A"}), frozenset())
    # Wanted paths the service does not publish count as its paths too.
    assert plan_rules(a(1, 2, 3), ()).namespaces == {"/A"}
    # The shallowest ancestor that qualifies wins; a mixed one gives way to a deeper one.
    deep = {"/A/B/1", "/A/B/2", "/A/B/3"}
    assert plan_rules(deep, deep | {"/A/C/1"}) == RulePlan(frozenset({"/A"}), frozenset())
    noisy = deep | {f"/A/C/{n}" for n in range(10)}
    assert plan_rules(deep, noisy) == RulePlan(frozenset({"/A/B"}), frozenset())


segment = st.sampled_from(["A", "B", "C", "Cell1", "Cell2", "0"])
bus_paths = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(st.sets(bus_paths, max_size=40), st.data())
def test_plan_covers_every_wanted_path_and_admits_at_most_two_unwanted_per_wanted(known, data):
    wanted = data.draw(st.sets(bus_paths, max_size=20))
    plan = plan_rules(wanted, known)
    everything = known | wanted

    def under(namespace: str, path: str) -> bool:
        return path == namespace or path.startswith(namespace + "/")

    assert "/" not in plan.namespaces and plan.paths <= wanted
    for path in wanted:
        covered = [n for n in plan.namespaces if under(n, path)]
        assert (path in plan.paths) != bool(covered)  # covered exactly once
    for n in plan.namespaces:
        assert not any(under(m, n) for m in plan.namespaces if m != n)
        inside = {p for p in everything if under(n, p)}
        wanted_inside = inside & wanted
        assert len(wanted_inside) >= 3 and len(inside - wanted) <= 2 * len(wanted_inside)


def test_rules_for_a_plan_and_for_the_whole_sender():
    items = ("type='signal',sender=':1.7',path='/',interface='com.victronenergy.BusItem',"
             "member='ItemsChanged'")
    changed = "interface='com.victronenergy.BusItem',member='PropertiesChanged'"
    assert rules_for(":1.7", None) == {items, f"type='signal',sender=':1.7',{changed}"}
    plan = RulePlan(frozenset({"/Dc"}), frozenset({"/Soc"}))
    assert rules_for(":1.7", plan) == {
        items,
        f"type='signal',sender=':1.7',path_namespace='/Dc',{changed}",
        f"type='signal',sender=':1.7',path='/Soc',{changed}",
    }
