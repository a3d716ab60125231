"""Pack identity on the bus: a service stays one pack when its name or serial changes, and
`forget-packs` forgets only packs that are gone, for callers that may ask."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.auth import AuthAnonymous

from aggbatt.sim.privatebus import start_private_bus
from aggbatt.tools.status import STATUS_INTERFACE, forget_missing
from tests.busclient import aggregate_values, set_value, wait_for_values
from tests.daemonharness import running, sim_pack
from tests.factories import fast_config

AGG = "com.victronenergy.battery.aggregate"


def known(tmp_path: Path) -> list[str] | None:
    try:
        return json.loads((tmp_path / "state" / "packs.json").read_text())["known"]
    except (OSError, ValueError, KeyError):
        return None


async def wait_for_known(tmp_path: Path, expected: list[str], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while known(tmp_path) != expected:
        assert loop.time() < deadline, f"known packs {known(tmp_path)}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_renaming_a_pack_without_serial_leaves_no_ghost(bus_address, tmp_path):
    config = fast_config(freshness={"on_pack_lost": "block_charge"})
    async with running(bus_address, tmp_path, [sim_pack("", custom_name="Left"), sim_pack("P1")],
                       config=config) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        left = h.bank.packs[0].service_name
        # what the GUI does when the user renames the pack
        assert await set_value(h.client, left, "/CustomName", Variant("s", "Right")) == 0
        await wait_for_known(tmp_path, ["P1", "Right"])
        values = await aggregate_values(h.client)
        assert values["/System/NrOfModulesOffline"] == 0
        assert values["/Alarms/BmsCable"] == 0
        assert values["/Info/MaxChargeCurrent"] > 0
    async with running(bus_address, tmp_path, [sim_pack("", custom_name="Right"), sim_pack("P1")],
                       config=config) as h:
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        assert values["/System/NrOfModulesOffline"] == 0
        assert values["/Info/MaxChargeCurrent"] > 0


async def test_a_serial_that_changes_on_every_read_stays_one_pack(bus_address, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aggbatt")
    config = fast_config(service={"tick_interval": 0.2})
    async with running(bus_address, tmp_path, [sim_pack("P0"), sim_pack("P1")], config=config) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
        await wait_for_known(tmp_path, ["P0", "P1"])
        written = (tmp_path / "state" / "packs.json").stat().st_mtime_ns
        flapping = h.bank.packs[0]
        for n in range(20):         # a new serial on every publish, several ticks in between
            flapping.params.serial = f"F{n}"
            await asyncio.sleep(0.1)
            if n % 5 == 4:
                values = await aggregate_values(h.client)
                assert values["/System/NrOfModulesOnline"] == 2
                assert values["/System/NrOfModulesOffline"] == 0
                assert values["/Alarms/BmsCable"] == 0
        assert known(tmp_path) == ["P0", "P1"]
        assert (tmp_path / "state" / "packs.json").stat().st_mtime_ns == written
    told = [r for r in caplog.records if "reports another id" in r.getMessage()]
    assert len(told) == 1


@asynccontextmanager
async def unreadable(bus_address: str, name: str) -> AsyncIterator[None]:
    """A battery service on the bus whose driver answers every call with an error (busy at boot,
    or broken): aggbatt cannot tell which pack it is."""
    bus = await MessageBus(bus_address=bus_address).connect()

    def busy(msg: Message) -> Message | None:
        if msg.message_type is MessageType.METHOD_CALL:
            return Message.new_error(msg, "org.freedesktop.DBus.Error.Failed", "busy")
        return None

    bus.add_message_handler(busy)
    await bus.request_name(name)
    try:
        yield
    finally:
        bus.disconnect()


async def forget(bus_address: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await forget_missing(bus_address, AGG, out, err)
    return code, out.getvalue() + err.getvalue()


async def test_forget_packs_never_forgets_a_pack_on_the_bus(bus_address, tmp_path):
    three = [sim_pack("P0"), sim_pack("P1"), sim_pack("P2")]
    async with running(bus_address, tmp_path, three) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 3)
    async with unreadable(bus_address, "com.victronenergy.battery.ttyUSB7"):
        async with running(bus_address, tmp_path, three[:2]) as h:
            quiet = h.bank.packs[1]
            quiet.block_charge()
            await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] == 0)
            quiet.freeze()                                     # blocking, and then silent
            code, said = await forget(bus_address)
            assert code == 1 and "com.victronenergy.battery.ttyUSB7" in said, said
            assert "nothing forgotten" in said
            values = await aggregate_values(h.client)
            assert values["/System/NrOfModulesOffline"] == 1   # P2 is still known
            assert values["/Info/MaxChargeCurrent"] == 0
    async with running(bus_address, tmp_path, three[:2]) as h:   # the busy service is gone
        quiet = h.bank.packs[1]
        quiet.block_charge()
        await wait_for_values(h.client, lambda v: v["/Info/MaxChargeCurrent"] == 0)
        quiet.freeze()
        code, said = await forget(bus_address)
        assert code == 0 and "forgot: P2" in said, said
        values = await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 0)
        assert values["/Info/MaxChargeCurrent"] == 0           # the quiet pack's block holds


@pytest.fixture(scope="module")
def anonymous_bus() -> Iterator[str]:
    bus = start_private_bus(allow_anonymous=True)
    try:
        yield bus.address
    finally:
        bus.close()


async def test_forget_packs_is_refused_to_a_caller_of_unknown_user(anonymous_bus, tmp_path):
    async with running(anonymous_bus, tmp_path, [sim_pack("P0"), sim_pack("P1")]) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOnline"] == 2)
    async with running(anonymous_bus, tmp_path, [sim_pack("P0")]) as h:
        await wait_for_values(h.client, lambda v: v["/System/NrOfModulesOffline"] == 1)
        stranger = await MessageBus(bus_address=anonymous_bus, auth=AuthAnonymous()).connect()
        try:
            reply = await stranger.call(Message(
                destination=AGG, path="/", interface=STATUS_INTERFACE, member="ForgetMissingPacks"))
        finally:
            stranger.disconnect()
        assert reply is not None and reply.message_type is MessageType.ERROR
        assert reply.error_name == "org.freedesktop.DBus.Error.AccessDenied"
        values = await aggregate_values(h.client)
        assert values["/System/NrOfModulesOffline"] == 1       # nothing forgotten
        code, said = await forget(anonymous_bus)               # root, as the CLI runs on a GX
        assert code == 0 and "forgot: P1" in said, said
