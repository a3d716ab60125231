"""The daemon's I/O for the feed-in guard of a charge strategy that asks for one.

The strategies stay pure (strategies/own_charge.py, strategies/feedin.py); this module does what
they ask for. A charge strategy takes part by defining `take_feedin()` (the latest decision's
(wanted, reason), once) and `status()`; its balancing record is a state file like any other
(aggbatt.daemon.store).

- Feed-in guard: /Settings/CGwacs/OvervoltageFeedIn is read at start and followed with
  SettingsClient.watch. After every tick the guard gets the strategy's condition and the setting's
  value; its actions are executed in order: Persist (an atomic write of `feedin.json` through the
  state store; when it fails the rest of the list is dropped and the guard told, so no write
  happens that could not be restored), WriteSetting (serialised, logged with its reason, retried
  by the guard after RETRY_INTERVAL when it fails), Note (logged).
- A settings service that is absent or stops answering never raises into the tick: the value
  becomes unknown, the guard waits, and the setting is read again every RETRY_INTERVAL seconds.
- Nothing is written before the aggregate's bus name is ours (`active`): a second instance that
  fails to claim the name must not fight the first one over the user's setting or the state files.
- Shutdown (`close`): pending writes finish, then a held setting is given back (guard.release), and
  the cleared record is written once the write succeeded; otherwise the record still says holding
  and the next start restores it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from aggbatt.bus.settings import SettingsClient, SettingsUnavailable
from aggbatt.config import Config
from aggbatt.core.strategies import feedin
from aggbatt.core.strategies.feedin import FeedinGuard, Note, Persist, WriteSetting, restore_mode
from aggbatt.daemon.store import StateStore

log = logging.getLogger("aggbatt.charge")

FEEDIN_FILE = "feedin.json"
RETRY_INTERVAL = 5.0  # s between attempts to write or re-read the setting
RELEASE_TIMEOUT = 3.0  # s a shutdown waits for the settings service


class FeedinIO:
    def __init__(self, strategy: Any, store: StateStore, guard: bool,
                 clock: Callable[[], float]) -> None:
        self.strategy = strategy
        self.store = store
        self.clock = clock
        self.guard: FeedinGuard | None = None
        if guard:
            read = store.read(FEEDIN_FILE, feedin.STATE_VERSION)
            restored = restore_mode(read.data, read.problem)
            if restored.problem is not None:
                log.warning("feed-in guard state unusable: %s", restored.problem)
            self.guard = FeedinGuard(restored, retry_interval=RETRY_INTERVAL)
        self.settings: SettingsClient | None = None
        self.value: int | None = None
        self._watching = False
        self._next_read = -math.inf
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failing = False

    @classmethod
    def create(cls, strategy: Any, config: Config, store: StateStore,
               clock: Callable[[], float]) -> FeedinIO | None:
        """The I/O for a charge strategy that states a feed-in wish; None for any other."""
        if not callable(getattr(strategy, "take_feedin", None)):
            return None
        return cls(strategy, store, bool(config.feedin.guard), clock)

    async def start(self, settings: SettingsClient) -> None:
        self.settings = settings
        if self.guard is not None:
            await self._read()

    # ----- after every tick ----------------------------------------------------------------------

    def after_tick(self, now: float, active: bool) -> None:
        """`active`: the aggregate's name is ours, writes are allowed."""
        wish = self.strategy.take_feedin()  # None: the tick failed, the guard waits
        if not active or self.guard is None:
            return
        if self.value is None and now >= self._next_read:
            self._next_read = now + RETRY_INTERVAL
            self._spawn(self._read())
        if wish is not None:
            self._execute(self.guard.step(now, wish[0], wish[1], self.value))

    # ----- actions -------------------------------------------------------------------------------

    def _execute(self, actions: list[Any]) -> None:
        assert self.guard is not None
        for action in actions:
            if isinstance(action, Persist):
                try:
                    self.store.write(FEEDIN_FILE, action.record)
                except OSError as exc:
                    log.error("cannot save the feed-in guard state (%s): %s not written", exc,
                              feedin.FEEDIN_PATH)
                    self.guard.persist_failed()
                    return
            elif isinstance(action, WriteSetting):
                self._spawn(self._write(action))
            elif isinstance(action, Note):
                log.log(action.level, "%s", action.message)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, action: WriteSetting) -> None:
        assert self.guard is not None
        async with self._lock:
            log.info("%s := %d: %s", action.path, action.value, action.reason)
            code: int | None = None
            why = ""
            if self.settings is None:
                why = "no settings client"
            else:
                try:
                    code = await self.settings.set(action.path, action.value)
                    why = f"localsettings answered {code}"
                except SettingsUnavailable as exc:
                    why = str(exc)
                    self.value = None
            ok = code == 0
            if ok:
                self.value = action.value
                if self._failing:
                    log.info("%s written again", action.path)
                self._failing = False
            else:
                level = logging.DEBUG if self._failing else logging.WARNING
                log.log(level, "could not write %s := %d (%s); retrying every %g s",
                        action.path, action.value, why, RETRY_INTERVAL)
                self._failing = True
            self.guard.write_result(self.clock(), ok)

    async def _read(self) -> None:
        assert self.settings is not None
        try:
            if not self._watching:
                await self.settings.watch([feedin.FEEDIN_PATH], self._changed)
                self._watching = True
            self.value = feedin.setting_value(await self.settings.get(feedin.FEEDIN_PATH))
        except SettingsUnavailable as exc:
            log.debug("cannot read %s: %s", feedin.FEEDIN_PATH, exc)
            self.value = None

    def _changed(self, path: str, value: Any) -> None:
        self.value = feedin.setting_value(value)

    def status(self) -> dict[str, Any]:
        """For `aggbatt status`: the strategy's own report and where the feed-in guard is."""
        return {
            **self.strategy.status(),
            "feedin_guard": self.guard.mode.value if self.guard is not None else "off",
            "feedin_setting": self.value,
        }

    # ----- shutdown ------------------------------------------------------------------------------

    async def close(self, active: bool) -> None:
        """Give a held setting back; only the instance that owns the aggregate's name acts."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=RELEASE_TIMEOUT)
        if not active or self.guard is None:
            return
        self._execute(self.guard.release(self.clock(), "aggbatt stops: DC feed-in handed back"))
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=RELEASE_TIMEOUT)
        if self.value == feedin.FEEDIN_ON:
            self._execute(self.guard.step(self.clock(), False, "", self.value))
        for task in self._tasks:
            task.cancel()
