"""What every D-Bus client here shares: the BusItem and bus-daemon names, and one call helper.

A call ends in a reply, or in CallFailed: no answer in time, no connection, or an error reply.
The error reply's name and text travel with it, so a caller can tell "the service is not on the
bus" from "the service refused" without looking at the message itself.
"""

from __future__ import annotations

import asyncio

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from aggbatt.errors import AggbattError

BUSITEM = "com.victronenergy.BusItem"
DBUS = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
# Error replies that mean nobody owns the name the call went to.
NO_OWNER = frozenset({"org.freedesktop.DBus.Error.ServiceUnknown",
                      "org.freedesktop.DBus.Error.NameHasNoOwner"})


class CallFailed(AggbattError, RuntimeError):
    """A D-Bus call timed out, failed or was answered with an error.

    `error_name` and `text` are the error reply's; both are empty for a timeout (`timed_out`)
    or a failed connection (`cause`)."""

    def __init__(self, message: str, error_name: str | None = None, text: str = "", *,
                 timed_out: bool = False, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.text = text
        self.timed_out = timed_out
        self.cause = cause


def dbus_message(member: str, signature: str = "", body: list[object] | None = None) -> Message:
    """A call to the bus daemon itself."""
    return Message(destination=DBUS, path=DBUS_PATH, interface=DBUS, member=member,
                   signature=signature, body=body or [])


async def call(bus: MessageBus, message: Message, timeout: float) -> Message:
    """Send `message` and return its method reply; raise CallFailed otherwise."""
    member = message.member
    try:
        reply = await asyncio.wait_for(bus.call(message), timeout)
    except asyncio.TimeoutError:
        raise CallFailed(f"no answer to {member} within {timeout:g} s", timed_out=True) from None
    except Exception as exc:  # noqa: BLE001 - a closed connection raises many kinds
        raise CallFailed(f"{member} failed: {exc}", cause=exc) from None
    if reply is None:
        raise CallFailed(f"no reply to {member}")
    if reply.message_type is MessageType.ERROR:
        text = str(reply.body[0]) if reply.body else ""
        raise CallFailed(f"{member} was answered with {reply.error_name}: {text}",
                         reply.error_name, text)
    return reply
