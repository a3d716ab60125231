"""Read a service on the private bus the way Venus consumers do (plain calls, no aggbatt code)."""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

BUSITEM = "com.victronenergy.BusItem"


async def call(bus: MessageBus, service: str, path: str, member: str, signature: str = "",
               body: list[Any] | None = None, timeout: float = 5.0) -> Message:
    reply = await asyncio.wait_for(bus.call(Message(
        destination=service, path=path, interface=BUSITEM, member=member,
        signature=signature, body=body or [])), timeout)
    assert reply is not None
    return reply


async def get_items(bus: MessageBus, service: str) -> dict[str, dict[str, Variant]]:
    reply = await call(bus, service, "/", "GetItems")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return reply.body[0]


async def get_value(bus: MessageBus, service: str, path: str) -> Variant:
    reply = await call(bus, service, path, "GetValue")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return reply.body[0]


async def set_value(bus: MessageBus, service: str, path: str, value: Variant) -> int:
    reply = await call(bus, service, path, "SetValue", "v", [value])
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    return reply.body[0]


class SignalRecorder:
    """Collects BusItem signals from one sender, subscribed with plain AddMatch rules."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.signals: list[Message] = []
        self.event = asyncio.Event()

    async def start(self, sender: str) -> SignalRecorder:
        def handler(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.interface == BUSITEM:
                self.signals.append(msg)
                self.event.set()

        self.bus.add_message_handler(handler)
        for member in ("ItemsChanged", "PropertiesChanged"):
            rule = f"type='signal',sender='{sender}',interface='{BUSITEM}',member='{member}'"
            await self.bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                        interface="org.freedesktop.DBus", member="AddMatch",
                                        signature="s", body=[rule]))
        return self

    def of(self, member: str) -> list[Message]:
        return [m for m in self.signals if m.member == member]

    async def wait_for(self, predicate, timeout: float = 3.0) -> None:
        await until(self.event, predicate, timeout)


async def until(event: asyncio.Event, predicate, timeout: float = 3.0) -> None:
    """Wait until predicate() holds, re-checking each time `event` is set; bounded by timeout."""
    async def _wait() -> None:
        while not predicate():
            event.clear()
            await event.wait()
    await asyncio.wait_for(_wait(), timeout)


async def eventually(predicate, timeout: float = 3.0, interval: float = 0.01) -> None:
    """Wait until predicate() holds, checking every `interval` s (for conditions no event marks)."""
    async def _wait() -> None:
        while not predicate():
            await asyncio.sleep(interval)
    await asyncio.wait_for(_wait(), timeout)


def near(path: str, expected: float, tolerance: float):
    """A wait_for_values predicate: `path` is valid and within tolerance of expected."""
    def check(values: dict[str, Any]) -> bool:
        value = values[path]
        return value is not None and abs(value - expected) <= tolerance
    return check


async def aggregate_values(bus: MessageBus, service: str = "com.victronenergy.battery.aggregate") -> dict[str, Any]:
    """GetItems of a service, unwrapped: path -> value (None = invalid)."""
    from aggbatt.bus.values import unwrap

    return {path: unwrap(entry["Value"]) for path, entry in (await get_items(bus, service)).items()}


async def wait_for_values(bus: MessageBus, predicate, timeout: float = 5.0, interval: float = 0.02,
                          service: str = "com.victronenergy.battery.aggregate") -> dict[str, Any]:
    """Poll GetItems until predicate(values) holds; fail with the last values after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    values: dict[str, Any] = {}
    while True:
        try:
            values = await aggregate_values(bus, service)
        except AssertionError:
            values = {}
        if values and predicate(values):
            return values
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last values: {values}")
        await asyncio.sleep(interval)
