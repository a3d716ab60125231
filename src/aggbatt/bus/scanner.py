"""A second connection to the bus, served by its own event loop in a thread, for large one-off calls.

dbus-fast decodes a message in full on the loop that reads it. A service that answers GetItems with
hundreds of thousands of paths (tens of MB, what a stock system bus still passes) would keep the
daemon's loop busy for seconds: on a GX, whose dbus-fast is pure Python, close to the watchdog's
limit. Calls made here are decoded, and what the caller keeps of them is picked out, on the
scanner's thread; the daemon's loop only awaits the small result. Pure-Python decoding gives up the
GIL every few milliseconds, so the daemon's loop goes on meanwhile. (dbus-fast's compiled decoder
holds the GIL for a whole message: with it the loop still waits for the decoding itself, though
not for the garbage collector or for freeing the reply; see _scan_call.)

Signals and match rules stay on the main connection: the scanner holds no match rules and receives
only the replies to its own calls, so its replies may overtake or trail signals; the monitor applies
a scan only to the paths no signal has updated.

The scanner ends with `close()`, and on its own once the main connection is gone or its loop is
closed, so a connection that is dropped without closing the monitor leaves no thread behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import quote

from dbus_fast import MessageType
from dbus_fast.aio import MessageBus

from aggbatt.bus.busitem import call, dbus_message

T = TypeVar("T")

# How often the scanner checks that the main connection is still there.
WATCH_INTERVAL = 1.0
# The bus daemon itself answers the round trip that follows a call.
RELEASE_TIMEOUT = 1.0
# Seconds the cyclic garbage collector may stay paused by overlapping calls (see _scan_call).
MAX_PAUSE = 10.0

log = logging.getLogger(__name__)


def address_of(bus: MessageBus) -> str:
    """The address `bus` was opened with, as a D-Bus address string."""
    return ";".join(
        transport + ":" + ",".join(f"{key}={quote(value, safe='-_/.')}" for key, value in options.items())
        for transport, options in bus._bus_address
    )


class Scanner:
    """Runs coroutines against its own connection on its own thread; see the module docstring."""

    def __init__(self, main: MessageBus, loop: asyncio.AbstractEventLoop,
                 thread: threading.Thread, bus: MessageBus, ended: asyncio.Future[None]) -> None:
        self._main = main
        self._loop = loop
        self._thread = thread
        self.bus = bus
        self._ended = ended
        self._stopping = False

    @classmethod
    async def open(cls, main: MessageBus, timeout: float) -> Scanner:
        """Connect to the bus `main` is connected to; raise when that fails within `timeout`."""
        address = address_of(main)
        caller = asyncio.get_running_loop()
        ended: asyncio.Future[None] = caller.create_future()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=_serve, args=(loop, caller, ended), name="aggbatt-scanner",
                                  daemon=True)
        thread.start()
        try:
            bus = await asyncio.wait_for(
                asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_connect(address), loop)),
                timeout)
        except BaseException:
            # The attempt was cancelled (timeout) or failed; its thread ends once it has unwound.
            loop.call_soon_threadsafe(loop.stop)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(ended), timeout)
                thread.join()
            raise
        scanner = cls(main, loop, thread, bus, ended)
        asyncio.run_coroutine_threadsafe(scanner._watch(caller), loop)
        return scanner

    @property
    def alive(self) -> bool:
        return not self._stopping and self.bus.connected

    async def run(self, call: Callable[[MessageBus], Coroutine[Any, Any, T]], timeout: float) -> T:
        """`call(bus)` on the scanner's loop and connection; its result, or what it raised.
        Raises asyncio.TimeoutError after `timeout` seconds (and cancels the call), ConnectionError
        when the scanner has stopped."""
        coroutine = _scan_call(call, self.bus)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        except RuntimeError:
            coroutine.close()
            raise ConnectionError("the scanner has stopped") from None
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def stop(self) -> None:
        """Ask the scanner to disconnect and end its thread. Calls in flight fail as on a lost
        connection, so their callers get an error, not a cancellation they did not ask for."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self._loop.call_soon_threadsafe(self.bus.disconnect)
        except RuntimeError:
            pass  # its loop is closed already: the thread has ended

    async def close(self, timeout: float = 1.0) -> None:
        """stop(), then wait up to `timeout` seconds for the thread to end (it is a daemon thread:
        one still decoding a huge reply cannot hold up the process's exit)."""
        self.stop()
        try:
            await asyncio.wait_for(asyncio.shield(self._ended), timeout)
        except asyncio.TimeoutError:
            log.warning("the scanner thread did not end within %g s", timeout)
            return
        self._thread.join()

    async def _watch(self, caller: asyncio.AbstractEventLoop) -> None:
        """End the scanner once its connection is gone (stop(), or lost: `alive` then sends scans
        to the main connection), the main connection is gone, or the caller's loop is closed."""
        lost = asyncio.ensure_future(self.bus.wait_for_disconnect())
        while self._main.connected and not caller.is_closed() and not lost.done():
            await asyncio.wait({lost}, timeout=WATCH_INTERVAL)
        self._stopping = True
        self.bus.disconnect()
        # How it was lost does not matter here; gathered so asyncio does not log it.
        await asyncio.gather(lost, return_exceptions=True)
        calls = asyncio.all_tasks() - {asyncio.current_task()}
        await asyncio.gather(*calls, return_exceptions=True)
        asyncio.get_running_loop().stop()


# Calls in flight on any scanner's thread, whether the cyclic garbage collector ran before the
# first of them, and since when it is paused; touched only by scanner threads, under _pause_lock.
_pause_lock = threading.Lock()
_calls = 0
_collecting = False
_paused_since = 0.0


async def _scan_call(call: Callable[[MessageBus], Coroutine[Any, Any, T]], bus: MessageBus) -> T:
    """Run `call(bus)` with the cyclic garbage collector paused, and let go of its reply after it.

    Decoding a huge reply allocates millions of objects, and the collector would walk them all
    again and again, holding the GIL in whatever thread allocates: most of what was left of the
    loop's stall, and most of it with dbus-fast's compiled decoder. The reply is freed by reference
    counting, not by the collector, once dbus-fast lets go of it: it keeps the last message it
    decoded until it decodes the next, so one small round trip follows each call. A call lasts at
    most the call timeout; calls that overlap (services that never answer, retried) could keep the
    collector paused for good, so it runs once when a call starts after MAX_PAUSE of pause.
    """
    global _calls, _collecting, _paused_since
    with _pause_lock:
        now = time.monotonic()
        if _calls == 0:
            _collecting = gc.isenabled()
            _paused_since = now
            gc.disable()
        elif _collecting and now - _paused_since > MAX_PAUSE:
            gc.collect()
            _paused_since = now
        _calls += 1
    # The collector resumes without awaiting anything first, so that it resumes even when the
    # call is cancelled or its coroutine is closed.
    try:
        try:
            result = await call(bus)
        except Exception:
            await _release(bus)
            raise
        await _release(bus)
        return result
    finally:
        with _pause_lock:
            _calls -= 1
            if _calls == 0 and _collecting:
                gc.enable()


async def _release(bus: MessageBus) -> None:
    with contextlib.suppress(Exception):
        await call(bus, dbus_message("GetId"), RELEASE_TIMEOUT)


async def _connect(address: str) -> MessageBus:
    # A MessageBus belongs to the loop it is created on.
    bus = await MessageBus(bus_address=address).connect()
    # dbus-fast takes a refused Hello (the bus's connection limit) for a connection: one call
    # proves it works.
    reply = await bus.call(dbus_message("GetId"))
    if reply is None or reply.message_type is MessageType.ERROR:
        bus.disconnect()
        raise ConnectionError(reply.body[0] if reply is not None and reply.body else "refused")
    return bus


def _serve(loop: asyncio.AbstractEventLoop, caller: asyncio.AbstractEventLoop,
           ended: asyncio.Future[None]) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
        # Let what is left unwind (a connection attempt that was given up).
        pending = asyncio.all_tasks(loop)
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    finally:
        loop.close()
        try:
            caller.call_soon_threadsafe(_finish, ended)
        except RuntimeError:
            pass  # the caller's loop is closed: nobody waits


def _finish(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)
