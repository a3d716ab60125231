"""Open a D-Bus connection with a bounded wait and an error message that says where."""

from __future__ import annotations

import asyncio

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from aggbatt.errors import AggbattError


class BusUnavailable(AggbattError, ConnectionError):
    """No connection could be made; the message names the bus and the cause."""


async def open_bus(address: str | None, timeout: float = 5.0) -> MessageBus:
    """Connect to `address`, or to the system bus when it is None (as on a GX device)."""
    where = "the system bus" if address is None else address
    bus = MessageBus(bus_type=BusType.SYSTEM) if address is None else MessageBus(bus_address=address)
    try:
        return await asyncio.wait_for(bus.connect(), timeout)
    except asyncio.TimeoutError:
        raise BusUnavailable(f"cannot connect to {where}: no answer within {timeout:g} s") from None
    except Exception as exc:  # noqa: BLE001 - dbus-fast raises many kinds for a bad address
        raise BusUnavailable(f"cannot connect to {where}: {exc}") from None
