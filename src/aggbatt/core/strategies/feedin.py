"""DC-coupled PV feed-in guard: a pure state machine that emits actions for the daemon to execute.

Why: with ESS "feed in excess DC-coupled PV" on (/Settings/CGwacs/OvervoltageFeedIn = 1) DVCC
drives the MPPTs at maximum and ignores CCL (victron-contract §4.5), so a lowered CVL alone cannot stop a
cell from being pushed further. While the condition holds the guard turns feed-in off, and turns it
back on afterwards - a user's setting, so it is handled with care (reference §5, §11 item 5,
section 4 item 10).

Rules:

- Condition (`wanted`): CVL is lowered for an over-voltage cell (dynamic CVL active, including its
  hold and recovery), optionally also while any pack blocks charging. It is computed by the charge
  strategy; the guard only follows it.
- An episode starts when the condition becomes true. Only when the setting is 1 at that moment does
  the guard act: it persists the user's value BEFORE the first write (the actions are ordered
  Persist, then WriteSetting; the daemon stops at a failed Persist and reports it with
  `persist_failed`, so nothing is ever written that could not be restored).
- When the condition clears, the saved value is written back exactly once and the record cleared
  once the setting reads back as restored. A crash between the two is harmless: after the restart
  the setting already reads 1, which ends the episode without a write.
- The user wins: if the setting reads 1 while the guard holds it at 0, the user changed it; the
  guard stops touching it until the condition clears (persisted, so a restart keeps its hands off).
  Likewise an episode that starts with the setting at 0 is left alone.
- Restart: the record {"version": 1, "saved_value": 1 | null, "holding": bool, "written": bool,
  "yielded": bool} says where the episode was ("written" = the 0 was seen on the bus; "yielded" =
  hands off until the condition clears; both may be absent, meaning false). A held episode resumes
  and restores when its condition clears, also if that is on the first tick.
- Absent state file: a first start, nothing to restore. Garbage (unreadable file, unknown version,
  holding without saved_value 1, wrong types): the guard does NOT invent a value to write. It starts
  idle, rewrites a clean record, and when the setting reads 0 it warns once that it cannot know
  whether the user had feed-in on, so the user can turn it back on.
- Unknown setting value (settings service absent or not read yet): the guard waits; it never starts
  an episode or restores blindly. A write that fails is retried after `retry_interval` seconds while
  still needed; the daemon logs every write and every failure with its reason.
- Shutdown (`release`): a held setting is restored before the daemon exits; if that write fails the
  record still says holding, and the next start restores it.

Transitions (v = the setting's present value as the daemon knows it):

    mode \\ input   | wanted, v=1      | wanted, v=0      | not wanted, v=1   | not wanted, v=0
    ---------------+------------------+------------------+-------------------+-----------------
    IDLE           | ENGAGING (save,  | HANDS_OFF        | IDLE              | IDLE
                   |  then write 0)   |                  |                   |
    ENGAGING       | ENGAGING (retry)*| HOLDING *        | IDLE              | HOLDING *
    HOLDING        | HANDS_OFF (user) | HOLDING          | IDLE (user)       | RESTORING (write)
    RESTORING      | IDLE (restored)  | HOLDING **       | IDLE (restored)   | RESTORING (retry)
    HANDS_OFF      | HANDS_OFF        | HANDS_OFF        | IDLE              | IDLE

v unknown: no transition. ENGAGING waits while its write is in flight. * A 0 in ENGAGING is ours
only if our write succeeded (or may have, right before a crash); a 0 we never wrote is the user's,
and so is a 1 after our 0 was written: HANDS_OFF while wanted, else IDLE, as in HOLDING when the
user sets 1. ** The condition is back before the restore landed (a failed write waiting for its
retry): writing 1 now would re-enable feed-in while a cell is over voltage, so the guard holds
again; a restore write already in flight cannot be called back, and a 1 it brings starts a new
episode (IDLE, then ENGAGING).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

FEEDIN_PATH = "/Settings/CGwacs/OvervoltageFeedIn"
STATE_VERSION = 1
FEEDIN_ON = 1
FEEDIN_OFF = 0


@dataclass(frozen=True)
class Persist:
    record: dict[str, Any]


@dataclass(frozen=True)
class WriteSetting:
    path: str
    value: int
    reason: str


@dataclass(frozen=True)
class Note:
    level: int  # logging level
    message: str


Action = Persist | WriteSetting | Note


class Mode(enum.Enum):
    IDLE = "idle"
    ENGAGING = "engaging"  # user's value saved, our 0 not yet seen on the bus
    HOLDING = "holding"  # the setting reads 0 because of us
    RESTORING = "restoring"  # the user's value is being written back
    HANDS_OFF = "hands off"  # this episode is the user's


def setting_value(raw: Any) -> int | None:
    """The setting as the guard understands it: 0, 1, or None for missing/garbage."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None
    if raw == 0:
        return FEEDIN_OFF
    if raw == 1:
        return FEEDIN_ON
    return None


@dataclass(frozen=True)
class Restored:
    mode: Mode
    problem: str | None  # set when the record was garbage (not when it was absent)


def restore_mode(data: dict[str, Any] | None, problem: str | None) -> Restored:
    """The mode to resume from a record read by persist.read_json (data None = absent/garbage)."""
    if data is None:
        absent = problem is None or "does not exist" in problem
        return Restored(Mode.IDLE, None if absent else problem)
    holding = data.get("holding", False)
    written = data.get("written", False)
    yielded = data.get("yielded", False)
    saved = data.get("saved_value")
    if not all(isinstance(flag, bool) for flag in (holding, written, yielded)):
        return Restored(Mode.IDLE, "holding/written/yielded are not true/false")
    if yielded:
        return Restored(Mode.HANDS_OFF, None)
    if not holding:
        return Restored(Mode.IDLE, None)
    if setting_value(saved) != FEEDIN_ON:
        return Restored(Mode.IDLE, f"holding with saved_value {saved!r}, not 1")
    return Restored(Mode.HOLDING if written else Mode.ENGAGING, None)


class FeedinGuard:
    def __init__(self, restored: Restored = Restored(Mode.IDLE, None), *,
                 retry_interval: float = 10.0) -> None:
        self.mode = restored.mode
        self.retry_interval = retry_interval
        self._lost = restored.problem  # garbage record: warn once when the setting reads 0
        self._pending: int | None = None  # the value of the write in flight
        # Whether our 0 was written: None = unknown (resumed after a restart, it may have landed
        # just before the crash). A 0 we never wrote is the user's.
        self._zero_written: bool | None = None if restored.mode is Mode.ENGAGING else False
        self._restored = False  # our restore write succeeded: a later 0 is the user's
        self._retry_at: float | None = None  # no write before this monotonic time
        self._unknown_noted = False

    # ----- records ---------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        holding = self.mode in (Mode.ENGAGING, Mode.HOLDING, Mode.RESTORING)
        return {
            "version": STATE_VERSION,
            "saved_value": FEEDIN_ON if holding else None,
            "holding": holding,
            "written": self.mode in (Mode.HOLDING, Mode.RESTORING),
            "yielded": self.mode is Mode.HANDS_OFF,
        }

    def _enter(self, mode: Mode) -> Persist:
        self.mode = mode
        self._retry_at = None
        return Persist(self.record())

    # ----- writes ----------------------------------------------------------------------------

    def _write(self, now: float, value: int, reason: str) -> list[Action]:
        if self._pending is not None or (self._retry_at is not None and now < self._retry_at):
            return []
        self._pending = value
        return [WriteSetting(FEEDIN_PATH, value, reason)]

    def write_result(self, now: float, ok: bool) -> None:
        """The daemon's report on the last WriteSetting (on success it also updates its value)."""
        if ok and self._pending == FEEDIN_OFF:
            self._zero_written = True
        if ok and self._pending == FEEDIN_ON:
            self._restored = True
        self._pending = None
        self._retry_at = None if ok else now + self.retry_interval

    def persist_failed(self) -> None:
        """The Persist before a first write failed: that write was not executed, start over."""
        self._pending = None
        if self.mode is Mode.ENGAGING:
            self.mode = Mode.IDLE

    # ----- the tick --------------------------------------------------------------------------

    def step(self, now: float, wanted: bool, reason: str, value: int | None) -> list[Action]:
        actions: list[Action] = []
        if self._lost is not None and value is not None:
            if value == FEEDIN_OFF:
                actions.append(Note(logging.WARNING, (
                    f"feed-in guard state was lost ({self._lost}); {FEEDIN_PATH} is 0 and is left "
                    "alone: if aggbatt turned DC feed-in off before, turn it on again yourself")))
            self._lost = None
            actions.append(Persist(self.record()))
        if value is None:
            if (wanted or self.mode is not Mode.IDLE) and not self._unknown_noted:
                self._unknown_noted = True
                actions.append(Note(logging.WARNING,
                                    f"{FEEDIN_PATH} is unknown (settings service absent?): "
                                    f"the feed-in guard waits ({self.mode.value})"))
            return actions
        self._unknown_noted = False
        handler = {
            Mode.IDLE: self._idle,
            Mode.ENGAGING: self._engaging,
            Mode.HOLDING: self._holding,
            Mode.RESTORING: self._restoring,
            Mode.HANDS_OFF: self._hands_off,
        }[self.mode]
        actions.extend(handler(now, wanted, reason, value))
        return actions

    def release(self, now: float, reason: str) -> list[Action]:
        """Shutdown: give a held setting back now (whatever the condition)."""
        if self.mode not in (Mode.ENGAGING, Mode.HOLDING, Mode.RESTORING):
            return []
        never_written = (self.mode is Mode.ENGAGING and self._zero_written is False
                         and self._pending is None)
        if self._restored or never_written:
            self._restored = False
            return [self._enter(Mode.IDLE)]
        self.mode = Mode.RESTORING
        self._retry_at = None
        self._pending = None
        return self._write(now, FEEDIN_ON, reason)

    def _idle(self, now: float, wanted: bool, reason: str, value: int) -> list[Action]:
        if not wanted:
            return []
        if value == FEEDIN_OFF:
            self.mode = Mode.HANDS_OFF
            return [Note(logging.INFO, f"{reason}; DC feed-in is already off, nothing to do")]
        self._zero_written = False
        return [self._enter(Mode.ENGAGING),
                *self._write(now, FEEDIN_OFF, f"{reason}; your value 1 is saved and restored later")]

    def _engaging(self, now: float, wanted: bool, reason: str, value: int) -> list[Action]:
        if self._pending is not None:
            return []
        if value == FEEDIN_OFF:
            if self._zero_written is False:
                return self._user_took_over(wanted)
            return [self._enter(Mode.HOLDING)]
        if self._zero_written:  # our 0 landed and the setting reads 1 again: the user's doing
            return self._user_took_over(wanted)
        if wanted:
            return self._write(now, FEEDIN_OFF, f"{reason} (retry)")
        return [self._enter(Mode.IDLE),
                Note(logging.INFO, "condition cleared before DC feed-in was turned off: nothing to restore")]

    def _user_took_over(self, wanted: bool) -> list[Action]:
        if wanted:
            return [self._enter(Mode.HANDS_OFF), Note(logging.WARNING, (
                f"{FEEDIN_PATH} was changed by someone else while aggbatt held it: that value "
                "wins, aggbatt leaves it alone until the over-voltage episode ends"))]
        return [self._enter(Mode.IDLE), Note(logging.INFO, (
            f"{FEEDIN_PATH} was changed by someone else during the episode: nothing to restore"))]

    def _holding(self, now: float, wanted: bool, reason: str, value: int) -> list[Action]:
        if value == FEEDIN_ON:
            return self._user_took_over(wanted)
        if wanted:
            return []
        self.mode = Mode.RESTORING
        return self._write(now, FEEDIN_ON, "condition cleared: restoring your value 1")

    def _restoring(self, now: float, wanted: bool, reason: str, value: int) -> list[Action]:
        if value == FEEDIN_ON or self._restored:
            self._restored = False
            return [self._enter(Mode.IDLE), Note(logging.INFO, f"{FEEDIN_PATH} restored to 1")]
        if wanted and self._pending is None:
            self.mode = Mode.HOLDING
            self._retry_at = None
            return [Note(logging.INFO, f"{reason} again before {FEEDIN_PATH} was restored: "
                                       "DC feed-in stays off")]
        return self._write(now, FEEDIN_ON, "restoring your value 1 (retry)")

    def _hands_off(self, now: float, wanted: bool, reason: str, value: int) -> list[Action]:
        if wanted:
            return []
        return [self._enter(Mode.IDLE)]
