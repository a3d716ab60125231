"""aggregate.py: bank values from online packs (reference §2, without the defects of §11)."""

from __future__ import annotations

from typing import Any

import pytest

from aggbatt.core.aggregate import aggregate, cell_path, cell_voltage_values, charge_mode_summary
from aggbatt.core.snapshot import PackSnapshot
from aggbatt.core.validation import validate
from tests.factories import snapshot

AT_REST: dict[str, Any] = dict(voltage=53.0, current=0.0, cvl=55.2, ccl=100.0, dcl=100.0)


def pack(pid: str, **fields: Any) -> PackSnapshot:
    return snapshot(pid, name=f"Pack {pid}", **{**AT_REST, **fields})


def test_voltage_is_the_mean_of_the_online_packs() -> None:
    values = aggregate([pack("A", voltage=53.0), pack("B", voltage=53.2), pack("C", voltage=53.6)], 1)
    # (53.0 + 53.2 + 53.6) / 3 = 159.8 / 3 = 53.2666...; divided by the packs used, not a configured N
    assert values["/Dc/0/Voltage"] == pytest.approx(53.26667, abs=1e-5)


@pytest.mark.parametrize(("mode", "expected"), [
    ("max", 31.0),
    ("mean", (18.0 + 31.0) / 2),
    ("min", 18.0),
])
def test_temperature_modes_skip_a_pack_without_sensor(mode: str, expected: float) -> None:
    packs = [pack("A", temperature=18.0), pack("B", temperature=None), pack("C", temperature=31.0)]
    assert aggregate(packs, 0, temperature_mode=mode)["/Dc/0/Temperature"] == pytest.approx(expected)


def test_no_temperature_sensor_at_all() -> None:
    values = aggregate([pack("A"), pack("B")], 0)
    assert values["/Dc/0/Temperature"] is None
    assert values["/System/MaxCellTemperature"] is None and values["/System/MaxTemperatureCellId"] is None


def test_cell_extremes_carry_pack_name_and_cell() -> None:
    packs = [
        pack("A", max_cell_voltage=3.401, max_voltage_cell_id="C3", min_cell_voltage=3.350,
             min_voltage_cell_id="C9", max_cell_temperature=25.0, max_temperature_cell_id="T1",
             min_cell_temperature=19.0, min_temperature_cell_id="T2"),
        pack("B", max_cell_voltage=3.455, max_voltage_cell_id="C12", min_cell_voltage=3.362,
             max_cell_temperature=28.5, max_temperature_cell_id=None, min_cell_temperature=20.0),
    ]
    values = aggregate(packs, 0)
    assert values["/System/MaxCellVoltage"] == 3.455
    assert values["/System/MaxVoltageCellId"] == "Pack B: C12"
    assert values["/System/MinCellVoltage"] == 3.350
    assert values["/System/MinVoltageCellId"] == "Pack A: C9"
    assert values["/System/MaxCellTemperature"] == 28.5
    assert values["/System/MaxTemperatureCellId"] == "Pack B"        # B gives no sensor id
    assert values["/System/MinCellTemperature"] == 19.0
    assert values["/System/MinTemperatureCellId"] == "Pack A: T2"
    # /Voltages/Diff = highest cell of the bank - lowest cell of the bank = 3.455 - 3.350 = 0.105
    assert values["/Voltages/Diff"] == pytest.approx(0.105)


def test_equal_extremes_keep_the_first_pack() -> None:
    packs = [pack("A", max_cell_voltage=3.4, max_voltage_cell_id="C1"),
             pack("B", max_cell_voltage=3.4, max_voltage_cell_id="C2")]
    assert aggregate(packs, 0)["/System/MaxVoltageCellId"] == "Pack A: C1"


def test_voltages_sum_is_the_mean_of_pack_sums_with_mixed_cell_counts() -> None:
    # 16 cells at 3.325 V = 53.2 V and 15 cells at 3.55 V = 53.25 V in parallel: the mean of the
    # pack sums is (53.2 + 53.25) / 2 = 53.225 V; a pack without a sum is skipped (no 0 V fallback).
    packs = [pack("A", voltages_sum=53.2, cells=16), pack("B", voltages_sum=53.25, cells=15),
             pack("C", voltages_sum=None, cells=16)]
    values = aggregate(packs, 0)
    assert values["/Voltages/Sum"] == pytest.approx(53.225)
    assert values["/System/NrOfCellsPerBattery"] is None  # counts differ


def test_equal_cell_counts_are_published() -> None:
    assert aggregate([pack("A", cells=16), pack("B", cells=16), pack("C")], 0)[
        "/System/NrOfCellsPerBattery"] == 16


def test_counts_and_blocking() -> None:
    packs = [pack("A", ccl=0.0), pack("B", allow_discharge=0), pack("C", blocking_charge=1),
             pack("D")]
    values = aggregate(packs, 2)
    assert values["/System/NrOfModulesOnline"] == 4
    assert values["/System/NrOfModulesOffline"] == 2
    assert values["/System/NrOfModulesBlockingCharge"] == 2      # A (CCL 0) and C (its own count)
    assert values["/System/NrOfModulesBlockingDischarge"] == 1   # B (AllowToDischarge 0)


def test_installed_capacity_sum() -> None:
    values = aggregate([pack("A", installed_capacity=280.0), pack("B", installed_capacity=100.0),
                        pack("C")], 0)
    assert values["/InstalledCapacity"] == 380.0


def test_alarms_are_the_max_and_invalid_pack_alarms_are_skipped() -> None:
    packs = [pack("A", alarms={"/Alarms/HighCellVoltage": 1, "/Alarms/LowSoc": 0}),
             pack("B", alarms={"/Alarms/HighCellVoltage": 2}),
             pack("C", alarms={})]
    values = aggregate(packs, 0)
    assert values["/Alarms/HighCellVoltage"] == 2
    assert values["/Alarms/LowSoc"] == 0
    assert values["/Alarms/LowVoltage"] is None        # nobody reports it
    assert values["/Alarms/InternalFailure"] == 0      # ours: no failure
    assert values["/Alarms/BmsCable"] == 0


@pytest.mark.parametrize(("online", "offline", "expected_packs", "level"), [
    (3, 0, 0, 0),
    (3, 1, 0, 1),   # a known pack is offline
    (3, 0, 4, 1),   # fewer online than expected
    (4, 0, 4, 0),
    (0, 2, 0, 2),   # none online
])
def test_bms_cable_alarm(online: int, offline: int, expected_packs: int, level: int) -> None:
    packs = [pack(str(i)) for i in range(online)]
    assert aggregate(packs, offline, expected_packs)["/Alarms/BmsCable"] == level


def test_a_pack_bms_cable_alarm_is_kept() -> None:
    packs = [pack("A", alarms={"/Alarms/BmsCable": 2}), pack("B")]
    assert aggregate(packs, 0)["/Alarms/BmsCable"] == 2


def test_io_flags_low_voltage_balancing() -> None:
    packs = [pack("A", allow_charge=1, allow_discharge=1, battery_low_voltage=44.8, balancing=0),
             pack("B", allow_charge=0, allow_discharge=None, battery_low_voltage=46.4, balancing=1),
             pack("C")]
    values = aggregate(packs, 0)
    assert values["/Io/AllowToCharge"] == 0
    assert values["/Io/AllowToDischarge"] == 1
    assert values["/Io/AllowToBalance"] is None
    assert values["/Info/BatteryLowVoltage"] == 46.4  # the Multi stops before the weakest pack does
    assert values["/Balancing"] == 1


def test_charge_mode_summary() -> None:
    assert charge_mode_summary([pack("A", charge_mode="Float"), pack("B", charge_mode="Float")]) == "Float"
    mixed = [pack("A", charge_mode="Float"), pack("B", charge_mode="Absorption"),
             pack("C", charge_mode="Absorption"), pack("D", charge_mode=None)]
    assert charge_mode_summary(mixed) == "Mixed: 2 Absorption, 1 Float"
    assert charge_mode_summary([pack("A")]) is None


def test_no_pack_online() -> None:
    values = aggregate([], 3, expected_packs=3)
    assert values["/Dc/0/Voltage"] is None
    assert values["/InstalledCapacity"] is None
    assert values["/Info/BatteryLowVoltage"] is None
    assert values["/System/NrOfModulesOnline"] == 0
    assert values["/System/NrOfModulesOffline"] == 3
    assert values["/Alarms/BmsCable"] == 2
    assert values["/Alarms/HighCellVoltage"] is None


def test_cell_voltage_paths() -> None:
    packs = [pack("SER 1/x", cell_voltages={1: 3.30, 2: 3.31}), pack("B", cell_voltages={})]
    assert cell_voltage_values(packs) == {"/Voltages/SER_1_x_Cell1": 3.30, "/Voltages/SER_1_x_Cell2": 3.31}
    assert cell_path("a@com.victronenergy.battery.tty0", 16) == "/Voltages/a_com_victronenergy_battery_tty0_Cell16"


def test_stock_system_page_counts_every_known_pack_in_parallel() -> None:
    values = aggregate([pack("A"), pack("B")], 1)
    assert values["/System/NrOfBatteries"] == 3
    assert values["/System/BatteriesParallel"] == 3
    assert values["/System/BatteriesSeries"] == 1
    assert "/NumberOfBmses" not in values  # it would switch the stock page to hiding its Alarms


def test_history_sums_counters_and_takes_extremes_over_the_packs_that_report_them() -> None:
    a = pack("A", history={"/History/ChargedEnergy": 120.5, "/History/DischargedEnergy": 100.25,
                           "/History/MinimumCellVoltage": 2.95,
                           "/History/MaximumCellVoltage": 3.61, "/History/MinimumVoltage": 49.1,
                           "/History/MaximumVoltage": 57.0, "/History/MinimumTemperature": 4.0,
                           "/History/MaximumTemperature": 35.0})
    b = pack("B", history={"/History/ChargedEnergy": 30.0, "/History/DischargedEnergy": 20.0,
                           "/History/MinimumCellVoltage": 3.01,
                           "/History/MaximumCellVoltage": 3.65, "/History/MinimumVoltage": 48.7,
                           "/History/MaximumVoltage": 56.2})
    values = aggregate([a, b, pack("C")], 0)
    assert values["/History/ChargedEnergy"] == pytest.approx(150.5)     # 120.5 + 30.0
    assert values["/History/DischargedEnergy"] == pytest.approx(120.25)
    assert values["/History/MinimumCellVoltage"] == 2.95
    assert values["/History/MaximumCellVoltage"] == 3.65
    assert values["/History/MinimumVoltage"] == 48.7
    assert values["/History/MaximumVoltage"] == 57.0
    assert values["/History/MinimumTemperature"] == 4.0                 # B has no sensor history
    assert values["/History/MaximumTemperature"] == 35.0
    assert aggregate([pack("C")], 0)["/History/ChargedEnergy"] is None


def test_history_is_read_from_the_pack_and_garbage_is_left_out() -> None:
    checked = validate({"/History/ChargedEnergy": 12.5, "/History/DischargedEnergy": -3.0,
                        "/History/MaximumCellVoltage": 3.6, "/History/ChargeCycles": 4.0})
    snap = PackSnapshot.build("A", "A", "com.victronenergy.battery.a", checked.values)
    assert snap.history == {"/History/ChargedEnergy": 12.5, "/History/MaximumCellVoltage": 3.6}
    assert "/History/DischargedEnergy" in checked.problems       # energy counters are never negative
