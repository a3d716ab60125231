"""The watchdog: a thread that ends the process when the tick loop stops; and the watch on each
bus connection.

A frozen daemon would leave DVCC applying its last limits forever (systemcalc has no timeout of
its own), so when no tick has started for `safety.watchdog_timeout` seconds the process exits with
code 3 and the supervisor restarts it. A thread, not a task: it must run when the event loop is
the thing that hangs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from dbus_fast.aio import MessageBus

log = logging.getLogger("aggbatt")


def start_watchdog(timeout: float, clock: Callable[[], float], heartbeat: Callable[[], float],
                   stopped: Callable[[], bool]) -> threading.Thread:
    """`heartbeat`: when the last tick started (on `clock`); `stopped`: the daemon is stopping."""

    def watch() -> None:
        while not stopped():
            time.sleep(min(1.0, timeout / 4))
            stalled = clock() - heartbeat()
            if stalled > timeout:
                log.critical("tick loop stalled for %.1f s: exiting so the supervisor "
                             "restarts aggbatt", stalled)
                logging.shutdown()
                os._exit(3)

    thread = threading.Thread(target=watch, name="aggbatt-watchdog", daemon=True)
    thread.start()
    return thread


async def watch_bus(bus: MessageBus, lost: Callable[[], None]) -> None:
    """A lost bus connection cannot be healed in place: `lost` stops the daemon with exit code 1
    so the supervisor restarts it, and it reconnects and rescans from scratch."""
    try:
        await bus.wait_for_disconnect()
    except Exception as exc:  # noqa: BLE001 - how it ended matters less than that it did
        log.debug("bus connection ended: %r", exc)
    lost()
