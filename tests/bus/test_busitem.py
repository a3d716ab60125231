"""bus/busitem.py: every way a call ends, against a private dbus-daemon."""

from __future__ import annotations

import pytest
from dbus_fast import Message

from aggbatt.bus.busitem import BUSITEM, NO_OWNER, CallFailed, call, dbus_message
from aggbatt.errors import AggbattError


async def test_a_reply_is_returned(connect):
    bus = await connect()
    reply = await call(bus, dbus_message("GetNameOwner", "s", [bus.unique_name]), 2.0)
    assert reply.body == [bus.unique_name]


async def test_an_error_reply_carries_its_name_and_text(connect):
    bus = await connect()
    msg = Message(destination="com.victronenergy.battery.absent", path="/Soc", interface=BUSITEM,
                  member="GetValue")
    with pytest.raises(CallFailed) as failed:
        await call(bus, msg, 2.0)
    assert failed.value.error_name in NO_OWNER
    assert "com.victronenergy.battery.absent" in failed.value.text
    assert not failed.value.timed_out and failed.value.cause is None
    assert isinstance(failed.value, AggbattError)


async def test_no_answer_in_time(connect):
    caller, mute = await connect(), await connect()
    # A handler that claims every call keeps dbus-fast from answering it.
    mute.add_message_handler(lambda msg: True)
    msg = Message(destination=mute.unique_name, path="/Soc", interface=BUSITEM, member="GetValue")
    with pytest.raises(CallFailed) as failed:
        await call(caller, msg, 0.2)
    assert failed.value.timed_out and failed.value.error_name is None

