"""Feed-in guard state machine: save before write, restore exactly once, the user wins."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggbatt.core.strategies.feedin import (
    FEEDIN_PATH,
    FeedinGuard,
    Mode,
    Note,
    Persist,
    Restored,
    WriteSetting,
    restore_mode,
    setting_value,
)

REASON = "CVL lowered: pack1 cell 3.500 V over 3.450 V"


def writes(actions) -> list[int]:
    return [a.value for a in actions if isinstance(a, WriteSetting)]


def persists(actions) -> list[dict]:
    return [a.record for a in actions if isinstance(a, Persist)]


def test_engage_persists_the_users_value_before_writing_zero():
    guard = FeedinGuard()
    actions = guard.step(0.0, True, REASON, 1)
    kinds = [type(a) for a in actions]
    assert kinds == [Persist, WriteSetting]
    assert actions[0].record == {"version": 1, "saved_value": 1, "holding": True,
                                 "written": False, "yielded": False}
    assert actions[1] == WriteSetting(FEEDIN_PATH, 0, f"{REASON}; your value 1 is saved and restored later")


def test_full_episode_restores_exactly_once():
    guard = FeedinGuard()
    guard.step(0.0, True, REASON, 1)
    guard.write_result(0.1, ok=True)
    actions = guard.step(1.0, True, REASON, 0)
    assert persists(actions) == [{"version": 1, "saved_value": 1, "holding": True,
                                  "written": True, "yielded": False}]
    assert guard.step(2.0, True, REASON, 0) == []
    actions = guard.step(3.0, False, "", 0)
    assert writes(actions) == [1] and "restoring your value 1" in actions[0].reason
    assert guard.step(3.5, False, "", 0) == []  # in flight: not written twice
    guard.write_result(3.6, ok=True)
    actions = guard.step(4.0, False, "", 1)
    assert writes(actions) == []
    assert persists(actions) == [{"version": 1, "saved_value": None, "holding": False,
                                  "written": False, "yielded": False}]
    assert guard.mode is Mode.IDLE
    assert writes(guard.step(5.0, False, "", 1)) == []


def test_episode_starting_with_feedin_off_is_left_alone():
    guard = FeedinGuard()
    actions = guard.step(0.0, True, REASON, 0)
    assert writes(actions) == [] and guard.mode is Mode.HANDS_OFF
    assert writes(guard.step(1.0, False, "", 0)) == []
    assert guard.mode is Mode.IDLE


def test_user_change_while_holding_wins_for_the_episode():
    guard = FeedinGuard()
    guard.step(0.0, True, REASON, 1)
    guard.write_result(0.1, ok=True)
    guard.step(1.0, True, REASON, 0)
    actions = guard.step(2.0, True, REASON, 1)  # the user turned it back on
    assert writes(actions) == []
    assert persists(actions)[0]["yielded"] is True
    assert any(isinstance(a, Note) and a.level == logging.WARNING for a in actions)
    for t in range(3, 10):
        assert writes(guard.step(float(t), True, REASON, 1)) == []
    assert writes(guard.step(10.0, False, "", 1)) == []
    assert guard.mode is Mode.IDLE
    # A new episode starts from scratch.
    assert writes(guard.step(11.0, True, REASON, 1)) == [0]


def test_user_change_right_after_our_write_is_not_overwritten():
    guard = FeedinGuard()
    guard.step(0.0, True, REASON, 1)
    guard.write_result(0.1, ok=True)  # our 0 landed; the user sets 1 before the next tick
    actions = guard.step(1.0, True, REASON, 1)
    assert writes(actions) == [] and guard.mode is Mode.HANDS_OFF


def test_user_restores_before_us():
    guard = FeedinGuard(Restored(Mode.HOLDING, None))
    actions = guard.step(0.0, False, "", 1)
    assert writes(actions) == [] and guard.mode is Mode.IDLE


def test_failed_write_is_retried_after_the_interval_only():
    guard = FeedinGuard(retry_interval=10.0)
    assert writes(guard.step(0.0, True, REASON, 1)) == [0]
    guard.write_result(0.5, ok=False)
    assert writes(guard.step(5.0, True, REASON, 1)) == []
    assert writes(guard.step(10.5, True, REASON, 1)) == [0]


def test_condition_clearing_before_the_zero_landed_needs_no_restore():
    guard = FeedinGuard()
    guard.step(0.0, True, REASON, 1)
    assert guard.step(0.5, False, "", 1) == []  # our write is still in flight: wait for it
    guard.write_result(0.6, ok=False)
    actions = guard.step(1.0, False, "", 1)
    assert writes(actions) == [] and guard.mode is Mode.IDLE
    assert persists(actions)[0]["holding"] is False


def test_write_landing_after_the_condition_cleared_is_restored():
    guard = FeedinGuard()
    guard.step(0.0, True, REASON, 1)
    guard.write_result(0.5, ok=True)
    assert guard.step(1.0, False, "", 0) == [Persist(guard.record())] or guard.mode is Mode.HOLDING
    assert writes(guard.step(2.0, False, "", 0)) == [1]


def test_condition_back_before_the_restore_landed_holds_again():
    guard = FeedinGuard(retry_interval=10.0)
    guard.step(0.0, True, REASON, 1)
    guard.write_result(0.1, ok=True)
    guard.step(1.0, True, REASON, 0)
    assert writes(guard.step(2.0, False, "", 0)) == [1]
    guard.write_result(2.1, ok=False)                     # the restore failed: retry after 10 s
    actions = guard.step(13.0, True, REASON, 0)           # retry due, but the cell is high again
    assert writes(actions) == [] and guard.mode is Mode.HOLDING
    assert [a.message for a in actions if isinstance(a, Note)] == [
        f"{REASON} again before {FEEDIN_PATH} was restored: DC feed-in stays off"]
    assert writes(guard.step(14.0, True, REASON, 0)) == []
    assert writes(guard.step(15.0, False, "", 0)) == [1]


def test_persist_failure_means_no_write_and_a_fresh_start():
    guard = FeedinGuard()
    actions = guard.step(0.0, True, REASON, 1)
    assert isinstance(actions[0], Persist)
    guard.persist_failed()  # the daemon stops before the WriteSetting
    assert guard.mode is Mode.IDLE
    again = guard.step(1.0, True, REASON, 1)
    assert [type(a) for a in again] == [Persist, WriteSetting]


def test_unknown_value_waits_and_notes_once():
    guard = FeedinGuard()
    first = guard.step(0.0, True, REASON, None)
    assert writes(first) == [] and len(first) == 1 and isinstance(first[0], Note)
    assert guard.step(1.0, True, REASON, None) == []
    assert guard.mode is Mode.IDLE


def test_release_on_shutdown_restores_a_held_setting():
    guard = FeedinGuard(Restored(Mode.HOLDING, None))
    actions = guard.release(0.0, "aggbatt stops")
    assert actions == [WriteSetting(FEEDIN_PATH, 1, "aggbatt stops")]
    assert FeedinGuard().release(0.0, "aggbatt stops") == []


# ----- restart ----------------------------------------------------------------------------------


def rec(**kw) -> dict:
    return {"version": 1, "saved_value": 1, "holding": True, "written": True, "yielded": False, **kw}


@pytest.mark.parametrize("data, problem, mode, garbage", [
    (None, "/x/feedin.json does not exist", Mode.IDLE, False),
    (None, "/x/feedin.json is not valid JSON (truncated or corrupt)", Mode.IDLE, True),
    (None, "/x/feedin.json has version 7, expected 1", Mode.IDLE, True),
    (rec(), None, Mode.HOLDING, False),
    (rec(written=False), None, Mode.ENGAGING, False),
    (rec(holding=False, saved_value=None, written=False, yielded=True), None, Mode.HANDS_OFF, False),
    ({"version": 1, "saved_value": 1, "holding": True}, None, Mode.ENGAGING, False),
    (rec(saved_value="yes"), None, Mode.IDLE, True),
    (rec(saved_value=0), None, Mode.IDLE, True),
    (rec(saved_value=None), None, Mode.IDLE, True),
    (rec(holding="true"), None, Mode.IDLE, True),
    (rec(holding=False, saved_value=None, written=False), None, Mode.IDLE, False),
])
def test_restore_mode(data, problem, mode, garbage):
    restored = restore_mode(data, problem)
    assert restored.mode is mode
    assert (restored.problem is not None) is garbage


def test_restart_while_holding_restores_when_the_condition_is_gone():
    guard = FeedinGuard(restore_mode(rec(), None))
    assert writes(guard.step(0.0, False, "", 0)) == [1]


def test_restart_while_holding_keeps_holding_while_the_condition_lasts():
    guard = FeedinGuard(restore_mode(rec(), None))
    assert guard.step(0.0, True, REASON, 0) == []


def test_crash_after_the_restore_write_does_not_write_again():
    guard = FeedinGuard(restore_mode(rec(), None))
    actions = guard.step(0.0, False, "", 1)  # our restore landed, the clear did not
    assert writes(actions) == [] and guard.mode is Mode.IDLE


def test_crash_between_persist_and_first_write_finishes_the_write():
    guard = FeedinGuard(restore_mode(rec(written=False), None))
    assert writes(guard.step(0.0, True, REASON, 1)) == [0]


def test_garbage_state_never_invents_a_value_and_warns_once():
    guard = FeedinGuard(restore_mode(rec(saved_value="yes"), None))
    actions = guard.step(0.0, False, "", 0)
    assert writes(actions) == []
    warnings = [a for a in actions if isinstance(a, Note) and a.level == logging.WARNING]
    assert len(warnings) == 1 and "turn it on again yourself" in warnings[0].message
    assert persists(actions) == [guard.record()]
    assert guard.step(1.0, False, "", 0) == []


def test_garbage_state_with_feedin_on_is_silent():
    guard = FeedinGuard(restore_mode(None, "x is not valid JSON"))
    actions = guard.step(0.0, False, "", 1)
    assert [type(a) for a in actions] == [Persist]


@pytest.mark.parametrize("raw, value", [(1, 1), (0, 0), (1.0, 1), (True, None), ("1", None),
                                        (2, None), (None, None), ([], None)])
def test_setting_value(raw, value):
    assert setting_value(raw) == value


# ----- model-based: a user, a flaky settings service, the condition, and restarts ---------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.booleans(),  # condition wanted this tick
    st.sampled_from(["none", "none", "none", "user_on", "user_off", "fail_next", "gone", "back",
                     "restart", "stop"]),
), min_size=1, max_size=60), st.sampled_from([0, 1]))
def test_model_user_value_survives_every_episode(steps, initial):
    """Invariants: a 0 is only written after a Persist saying holding with saved 1; a 1 is written
    at most once after each 0, and never while the condition holds (only a shutdown hands the
    setting back regardless); once the condition is gone and the service answers, the setting
    ends at the user's value."""
    setting = initial
    user_value = initial  # what the user last chose
    service_up = True
    fail_next = False
    saved: dict | None = None  # the state file
    guard = FeedinGuard(retry_interval=0.0)
    now = 0.0
    restores = [1]  # successful writes of 1 since our last 0 (the user's own value counts as one)

    def execute(actions, wanted: bool = False) -> None:
        nonlocal setting, saved, fail_next
        for action in actions:
            if isinstance(action, Persist):
                saved = action.record
            elif isinstance(action, WriteSetting):
                if action.value == 0:
                    assert saved is not None and saved["holding"] and saved["saved_value"] == 1
                assert not (wanted and action.value == 1), "feed-in turned on while the condition holds"
                if service_up and not fail_next:
                    setting = action.value
                    restores[0] = 0 if action.value == 0 else restores[0] + 1
                    assert restores[0] <= 1, "restored twice"
                    guard.write_result(now, ok=True)
                else:
                    fail_next = False
                    guard.write_result(now, ok=False)

    for wanted, event in steps:
        now += 1.0
        # The user changes the setting through the same settings service, one change per tick;
        # choosing the value it already has changes nothing anyone can see.
        if event == "user_on" and service_up and setting != 1:
            setting = user_value = 1
        elif event == "user_off" and service_up and setting != 0:
            setting = user_value = 0
        elif event == "fail_next":
            fail_next = True
        elif event == "gone":
            service_up = False
        elif event == "back":
            service_up = True
        elif event in ("restart", "stop"):
            if event == "stop":  # a clean shutdown first gives the setting back
                execute(guard.release(now, "aggbatt stops"))
            guard = FeedinGuard(restore_mode(saved, None if saved else "does not exist"),
                                retry_interval=0.0)
        execute(guard.step(now, wanted, REASON, setting if service_up else None), wanted)

    service_up = True
    fail_next = False
    for _ in range(5):
        now += 1.0
        execute(guard.step(now, False, "", setting))
    assert setting == user_value
    assert guard.mode is Mode.IDLE
