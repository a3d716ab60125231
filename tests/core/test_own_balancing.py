"""Balancing state machine with a fake clock: dates, goals, timeouts, restarts in every phase."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest

from aggbatt.core.strategies.balancing import (
    Balancing,
    BalancingInputs,
    BalancingParams,
    BalancingRecord,
    Phase,
    utc,
)
from aggbatt.daemon.persist import read_json, write_json_atomic

PARAMS = BalancingParams(repetition=10, cell_diff_max=0.025, timeout=4 * 3600.0)
# 16 cells: normal 3.35 V/cell = 53.6 V, balancing 3.45 V/cell = 55.2 V, tolerance 0.05 V/cell.
NORMAL, BAL, TOL = 53.6, 55.2, 0.8


def inputs(volts: float | None, diff: float | None = 0.010, normal: float = NORMAL,
           bal: float = BAL, charging: bool = True) -> BalancingInputs:
    return BalancingInputs(cvl_normal=normal, cvl_balancing=bal, tolerance=TOL,
                           bank_voltage=volts, cell_diff=diff, charging=charging)


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(day) + timedelta(hours=hour)


def machine(last: str | None = None, phase: Phase = Phase.IDLE, since: datetime | None = None,
            now: float = 0.0, wall: datetime | None = None) -> Balancing:
    record = BalancingRecord(date.fromisoformat(last) if last else None, phase, since)
    return Balancing(PARAMS, record, now, wall or at("2024-06-01"))


def test_fresh_install_balances_at_once_even_in_january():
    # The reference computed "never" as day 0, so the first days of January never balanced.
    b = machine(None, wall=at("2024-01-03"))
    step = b.step(0.0, at("2024-01-03"), inputs(52.0))
    assert step.phase is Phase.RAISING
    assert step.target == BAL
    assert step.changed


@pytest.mark.parametrize("last, not_yet, due", [
    ("2024-01-25", "2024-02-03", "2024-02-04"),  # month change
    ("2023-12-28", "2024-01-06", "2024-01-07"),  # year change
    ("2024-02-20", "2024-02-29", "2024-03-01"),  # leap year: February has 29 days
    ("2023-02-20", "2023-03-01", "2023-03-02"),  # no leap year: 28 days
    ("2024-02-29", "2024-03-09", "2024-03-10"),  # from the leap day itself
])
def test_due_after_repetition_days_across_calendar_boundaries(last, not_yet, due):
    b = machine(last)
    assert b.step(0.0, at(not_yet), inputs(52.0)).phase is Phase.IDLE
    assert b.step(1.0, at(due), inputs(52.0)).phase is Phase.RAISING


def test_leap_year_end_is_one_day_not_zero():
    # Reference: last = day 366, next day d = 1 -> 1 - 366 + 365 = 0 days: not due with repetition 1.
    b = Balancing(BalancingParams(1, 0.025, 3600.0),
                  BalancingRecord(date(2024, 12, 31)), 0.0, at("2024-12-31"))
    assert b.step(0.0, at("2024-12-31", 23), inputs(52.0)).phase is Phase.IDLE
    assert b.step(1.0, at("2025-01-01", 0), inputs(52.0)).phase is Phase.RAISING


def test_due_balancing_waits_for_the_bank_to_charge_and_times_from_there():
    b = machine("2024-05-01")
    step = b.step(0.0, at("2024-06-01", 0), inputs(52.0, charging=False))
    assert (step.phase, step.target) == (Phase.IDLE, NORMAL)
    assert "starts when the bank charges" in step.reason
    assert b.step(8 * 3600.0, at("2024-06-01", 8), inputs(52.0, charging=False)).phase is Phase.IDLE
    assert b.step(9 * 3600.0, at("2024-06-01", 9), inputs(52.5)).phase is Phase.RAISING
    # The 4 h timeout runs from 09:00, not from midnight; a pause in charging does not matter.
    assert b.step(13 * 3600.0 - 1, at("2024-06-01", 13), inputs(54.0, charging=False)).phase \
        is Phase.RAISING
    assert b.step(13 * 3600.0, at("2024-06-01", 13), inputs(54.0)).phase is Phase.IDLE


def test_gap_of_more_than_a_year_is_due():
    # Day-of-year arithmetic aliased 369 days to 4 days and skipped the balancing.
    b = machine("2022-06-01")
    assert b.step(0.0, at("2023-06-05"), inputs(52.0)).phase is Phase.RAISING


def test_last_balancing_in_the_future_counts_as_due():
    b = machine("2030-01-01")
    assert b.step(0.0, at("2024-06-01"), inputs(52.0)).phase is Phase.RAISING


def test_full_cycle_records_the_date_the_bank_falls_back():
    b = machine("2024-05-01")
    wall = at("2024-06-01", 8)
    assert b.step(0.0, wall, inputs(53.0)).phase is Phase.RAISING
    # Not yet: voltage below 55.2 - 0.8 = 54.4 V.
    assert b.step(60.0, wall, inputs(54.39)).phase is Phase.RAISING
    # Voltage reached but cells still apart (>= 25 mV).
    assert b.step(120.0, wall, inputs(54.4, diff=0.025)).phase is Phase.RAISING
    step = b.step(180.0, wall, inputs(54.4, diff=0.024))
    assert step.phase is Phase.HOLDING
    assert step.target == BAL
    assert any("goal reached" in str(e) for e in step.events)
    # A cable drop under charge current: the BMS reads the normal CVL, the hold goes on.
    assert b.step(240.0, wall, inputs(53.5)).phase is Phase.HOLDING
    # Held overnight while the voltage stays above the normal CVL, across midnight.
    assert b.step(3600.0, at("2024-06-01", 23), inputs(54.0, charging=False)).target == BAL
    assert b.step(7200.0, at("2024-06-02", 1), inputs(53.61, charging=False)).phase is Phase.HOLDING
    step = b.step(7260.0, at("2024-06-02", 1), inputs(53.6, charging=False))
    assert step.phase is Phase.IDLE
    assert step.target == NORMAL
    assert b.record.last_balancing == date(2024, 6, 2)
    assert b.next_due(date(2024, 6, 2)) == date(2024, 6, 12)


def test_hold_ends_after_the_timeout_when_the_bank_never_falls_back():
    b = machine("2024-05-01")
    wall = at("2024-06-01", 8)
    b.step(0.0, wall, inputs(53.0))
    assert b.step(100.0, wall, inputs(55.0)).phase is Phase.HOLDING
    # A backup bank kept full from the grid: never discharges, never reaches the normal CVL.
    assert b.step(100.0 + 4 * 3600 - 1, wall, inputs(55.1, charging=False)).phase is Phase.HOLDING
    step = b.step(100.0 + 4 * 3600, at("2024-06-01", 12), inputs(55.1, charging=False))
    assert step.phase is Phase.IDLE
    assert step.target == NORMAL
    assert any("without the bank falling back" in str(e) for e in step.events)
    assert b.record.last_balancing == date(2024, 6, 1)


def test_tolerance_applies_only_under_charge_current():
    b = machine(None)
    b.step(0.0, at("2024-06-01"), inputs(53.0))
    # At rest there is no cable drop: 54.4 V is 0.8 V short of 55.2 V, not "reached".
    assert b.step(1.0, at("2024-06-01"), inputs(54.4, charging=False)).phase is Phase.RAISING
    assert b.step(2.0, at("2024-06-01"), inputs(55.2, charging=False)).phase is Phase.HOLDING


def test_goal_unknown_inputs_do_not_count():
    b = machine(None)
    b.step(0.0, at("2024-06-01"), inputs(None))
    assert b.step(1.0, at("2024-06-01"), inputs(56.0, diff=None)).phase is Phase.RAISING


def test_idle_raising_holding_may_chain_in_one_tick_but_not_fall_back():
    b = machine(None)
    # The tolerance reaches below the normal CVL here: goal and fall back both hold for 53.0 V.
    wide = BalancingInputs(cvl_normal=54.0, cvl_balancing=54.4, tolerance=2.0, bank_voltage=53.0,
                           cell_diff=0.0, charging=False)
    step = b.step(0.0, at("2024-06-01"), replace(wide, charging=True))
    assert step.phase is Phase.HOLDING
    assert b.record.last_balancing is None
    assert b.step(1.0, at("2024-06-01"), wide).phase is Phase.IDLE


def test_goal_never_reached_gives_up_after_timeout_and_retries_next_day():
    b = machine(None)
    wall = at("2024-06-01", 9)
    b.step(1000.0, wall, inputs(53.0))
    assert b.step(1000.0 + 4 * 3600 - 1, wall, inputs(54.0)).phase is Phase.RAISING
    step = b.step(1000.0 + 4 * 3600, at("2024-06-01", 13), inputs(54.0))
    assert step.phase is Phase.IDLE
    assert step.target == NORMAL
    assert any("given up" in str(e) for e in step.events)
    assert b.record.gave_up_on == date(2024, 6, 1)
    assert b.record.last_balancing is None
    assert b.step(20000.0, at("2024-06-01", 23), inputs(53.0)).phase is Phase.IDLE
    assert b.step(40000.0, at("2024-06-02", 0), inputs(53.0)).phase is Phase.RAISING


def test_balancing_voltage_not_above_normal_counts_at_the_normal_cvl():
    # LFP preset in January: 3.55 V/cell normal, 3.40 V/cell balancing -> never raised.
    b = machine("2024-01-01")
    high_normal = dict(normal=56.8, bal=54.4)
    step = b.step(0.0, at("2024-01-20"), inputs(53.0, **high_normal))
    assert (step.phase, step.target, step.changed) == (Phase.IDLE, 56.8, False)
    step = b.step(1.0, at("2024-01-20"), inputs(53.6, diff=0.01, **high_normal))
    assert step.phase is Phase.IDLE
    assert step.changed
    assert b.record.last_balancing == date(2024, 1, 20)


# ----- restarts in every phase ---------------------------------------------------------------


def reload(b: Balancing, tmp_path, now: float, wall: datetime) -> Balancing:
    write_json_atomic(tmp_path / "balancing.json", b.record.to_json())
    read = read_json(tmp_path / "balancing.json", 1)
    assert read.problem is None
    record, problems = BalancingRecord.from_json(read.data)
    assert problems == []
    return Balancing(PARAMS, record, now, wall)


def test_restart_while_idle_keeps_the_date(tmp_path):
    b = machine("2024-05-28")
    b.step(0.0, at("2024-06-01"), inputs(53.0))
    b = reload(b, tmp_path, 5.0, at("2024-06-06"))
    assert b.step(5.0, at("2024-06-06"), inputs(53.0)).phase is Phase.IDLE
    assert b.step(6.0, at("2024-06-07"), inputs(53.0)).phase is Phase.RAISING


def test_restart_while_raising_keeps_the_timeout_running(tmp_path):
    b = machine(None)
    b.step(100.0, at("2024-06-01", 9), inputs(53.0))
    # Restart 3 h later (wall clock); the new process's monotonic clock starts elsewhere.
    b = reload(b, tmp_path, 5000.0, at("2024-06-01", 12))
    assert b.phase is Phase.RAISING
    assert b.step(5000.0 + 3599, at("2024-06-01", 12), inputs(54.0)).phase is Phase.RAISING
    assert b.step(5000.0 + 3600, at("2024-06-01", 13), inputs(54.0)).phase is Phase.IDLE


def test_restart_while_raising_can_still_reach_the_goal(tmp_path):
    b = machine(None)
    b.step(0.0, at("2024-06-01", 9), inputs(53.0))
    b = reload(b, tmp_path, 0.0, at("2024-06-01", 10))
    assert b.step(1.0, at("2024-06-01", 10), inputs(55.0)).phase is Phase.HOLDING


def test_restart_while_holding_keeps_holding_then_records(tmp_path):
    b = machine(None)
    b.step(0.0, at("2024-06-01", 9), inputs(53.0))
    b.step(1.0, at("2024-06-01", 10), inputs(55.0))
    b = reload(b, tmp_path, 0.0, at("2024-06-01", 11))
    step = b.step(0.0, at("2024-06-01", 11), inputs(54.0))
    assert (step.phase, step.target) == (Phase.HOLDING, BAL)
    assert b.step(1.0, at("2024-06-01", 12), inputs(53.5, charging=False)).phase is Phase.IDLE
    assert b.record.last_balancing == date(2024, 6, 1)


def test_restart_after_the_hold_time_ends_the_hold(tmp_path):
    b = machine(None)
    b.step(0.0, at("2024-06-01", 9), inputs(53.0))
    b.step(1.0, at("2024-06-01", 10), inputs(55.0))
    # Down for a day: the wall time since the hold began counts, 24 h > the 4 h limit.
    b = reload(b, tmp_path, 0.0, at("2024-06-02", 10))
    step = b.step(0.0, at("2024-06-02", 10), inputs(55.0, charging=False))
    assert (step.phase, step.target) == (Phase.IDLE, NORMAL)
    assert b.record.last_balancing == date(2024, 6, 2)


def test_record_round_trip_and_format():
    record = BalancingRecord(date(2024, 2, 29), Phase.HOLDING,
                             datetime(2024, 3, 1, 7, 30, tzinfo=timezone.utc), date(2024, 2, 28))
    data = record.to_json()
    assert data == {"version": 1, "last_balancing": "2024-02-29", "phase": "holding",
                    "phase_since": "2024-03-01T07:30:00+00:00", "gave_up_on": "2024-02-28"}
    assert BalancingRecord.from_json(data) == (record, [])


@pytest.mark.parametrize("data, field", [
    ({"version": 1, "last_balancing": 359, "phase": "idle"}, "last_balancing"),
    ({"version": 1, "last_balancing": "2024-13-01", "phase": "idle"}, "last_balancing"),
    ({"version": 1, "last_balancing": "2024-06-01", "phase": "balancing"}, "phase"),
    ({"version": 1, "phase": "raising", "phase_since": "yesterday"}, "phase_since"),
])
def test_garbage_fields_fall_back_one_by_one(data, field):
    record, problems = BalancingRecord.from_json(data)
    assert len(problems) == 1 and field in problems[0]
    if field == "phase":
        assert record.phase is Phase.IDLE and record.last_balancing == date(2024, 6, 1)


def test_missing_phase_since_restarts_the_phase_now_and_is_saved():
    b = Balancing(PARAMS, BalancingRecord(None, Phase.RAISING, None), 50.0, at("2024-06-01", 9))
    step = b.step(50.0, at("2024-06-01", 9), inputs(53.0))
    assert step.changed and b.record.phase_since == utc(at("2024-06-01", 9))
    assert b.step(50.0 + 4 * 3600 - 1, at("2024-06-01", 13), inputs(53.0)).phase is Phase.RAISING


def test_not_an_object():
    assert BalancingRecord.from_json([1, 2]) == (BalancingRecord(), ["the balancing state is not a JSON object"])


# ----- daylight-saving changes: the timeout counts real seconds ------------------------------


def local(utc_text: str, seconds: float = 0.0) -> datetime:
    """The naive local wall time the daemon hands over for a UTC moment (datetime.fromtimestamp)."""
    return datetime.fromtimestamp(datetime.fromisoformat(utc_text).timestamp() + seconds)


@pytest.mark.parametrize("start", [
    "2026-03-29T00:30:00+00:00",   # 01:30 CET; the clocks go forward at 01:00 UTC
    "2026-10-25T00:30:00+00:00",   # 02:30 CEST; the clocks go back at 01:00 UTC
])
def test_a_restart_across_a_dst_change_keeps_the_real_timeout(berlin, tmp_path, start):
    b = machine(None, wall=local(start))
    assert b.step(100.0, local(start), inputs(53.0)).phase is Phase.RAISING
    # Down for 3 real hours; the local clock moved 4 h (spring) or 2 h (autumn).
    b = reload(b, tmp_path, 7.0, local(start, 3 * 3600))
    assert b.step(7.0, local(start, 3 * 3600), inputs(54.0)).phase is Phase.RAISING
    assert b.step(7.0 + 3599, local(start, 4 * 3600 - 1), inputs(54.0)).phase is Phase.RAISING
    assert b.step(7.0 + 3600, local(start, 4 * 3600), inputs(54.0)).phase is Phase.IDLE


def test_a_local_phase_since_of_an_old_file_is_converted_once(berlin, tmp_path):
    path = tmp_path / "balancing.json"
    # Written before the spring change by a version that stored local time: 01:30 CET = 00:30 UTC.
    write_json_atomic(path, {"version": 1, "last_balancing": "2026-03-01", "phase": "raising",
                             "phase_since": "2026-03-29T01:30:00", "gave_up_on": None})
    read = read_json(path, 1)
    record, problems = BalancingRecord.from_json(read.data)
    assert problems == ["phase_since '2026-03-29T01:30:00' is a local time: converted to UTC "
                        "2026-03-29T00:30:00+00:00"]
    assert record.to_json()["phase_since"] == "2026-03-29T00:30:00+00:00"
    assert BalancingRecord.from_json(record.to_json()) == (record, [])
    start = "2026-03-29T00:30:00+00:00"
    b = Balancing(PARAMS, record, 0.0, local(start, 3 * 3600))
    assert b.step(3599.0, local(start, 4 * 3600 - 1), inputs(54.0)).phase is Phase.RAISING
    assert b.step(3600.0, local(start, 4 * 3600), inputs(54.0)).phase is Phase.IDLE
