"""Wire contract of bus/service.py, read with plain D-Bus calls like a Venus consumer."""

from __future__ import annotations

import asyncio

import pytest
from dbus_fast import Message, MessageType, Variant

from aggbatt.bus.service import BusItemService, ServiceNameTaken, unit_text
from tests.busclient import SignalRecorder, call, get_items, get_value, set_value

NAME = "com.victronenergy.battery.wiretest"


async def make_service(connect, signals="both") -> BusItemService:
    svc = BusItemService(await connect(), NAME, signals=signals)
    svc.add_path("/DeviceInstance", 7, kind=int)
    svc.add_path("/Dc/0/Voltage", 53.123, kind=float, decimals=2, text=unit_text("V", 2))
    svc.add_path("/Dc/0/Current", None, kind=float, decimals=2, text=unit_text("A", 2))
    svc.add_path("/ProductName", "aggbatt test", kind=str)
    accepted: list[str] = []
    svc.add_path("/CustomName", "", kind=str, writeable=True,
                 on_change=lambda p, v: (accepted.append(v), v != "forbidden")[1])
    svc.accepted = accepted  # type: ignore[attr-defined]
    await svc.register()
    return svc


async def test_get_items_types_and_invalid(connect):
    await make_service(connect)
    items = await get_items(await connect(), NAME)
    assert items["/DeviceInstance"]["Value"] == Variant("i", 7)
    assert items["/Dc/0/Voltage"]["Value"] == Variant("d", 53.12)
    assert items["/Dc/0/Voltage"]["Text"] == Variant("s", "53.12V")
    assert items["/Dc/0/Current"]["Value"].signature == "ai"
    assert items["/Dc/0/Current"]["Value"].value == []
    assert items["/Dc/0/Current"]["Text"].value == "---"


async def test_get_items_follows_every_change(connect):
    # GetItems is answered from a reply marshalled once; every kind of change must show in the
    # next one, and concurrent callers must each get the answer to their own call.
    svc = await make_service(connect)
    client = await connect()
    first = await asyncio.gather(*(get_items(client, NAME) for _ in range(5)))
    assert all(items == first[0] for items in first)
    assert first[0]["/Dc/0/Voltage"]["Value"] == Variant("d", 53.12)

    svc["/Dc/0/Voltage"] = 54.0
    svc["/Dc/0/Current"] = -3.5
    svc.add_path("/Soc", 80.0, kind=float, decimals=1)
    svc.remove_path("/ProductName")
    items = await get_items(client, NAME)
    assert items["/Dc/0/Voltage"] == {"Value": Variant("d", 54.0), "Text": Variant("s", "54.00V")}
    assert items["/Dc/0/Current"]["Value"] == Variant("d", -3.5)
    assert items["/Soc"]["Value"] == Variant("d", 80.0)
    assert "/ProductName" not in items

    assert await set_value(client, NAME, "/CustomName", Variant("s", "Rack")) == 0
    assert (await get_items(client, NAME))["/CustomName"]["Value"] == Variant("s", "Rack")
    svc["/Dc/0/Voltage"] = None
    items = await get_items(client, NAME)
    assert items["/Dc/0/Voltage"]["Value"].value == [] and items["/Dc/0/Voltage"]["Text"].value == "---"
    assert await get_value(client, NAME, "/Dc/0/Current") == Variant("d", -3.5)


async def test_leaf_and_subtree_get_value(connect):
    await make_service(connect)
    client = await connect()
    assert await get_value(client, NAME, "/Dc/0/Voltage") == Variant("d", 53.12)
    text = await call(client, NAME, "/Dc/0/Voltage", "GetText")
    assert text.body == ["53.12V"]
    root = await get_value(client, NAME, "/")
    assert root.signature == "a{sv}"
    assert root.value["Dc/0/Voltage"] == Variant("d", 53.12)
    sub = await get_value(client, NAME, "/Dc/0")
    assert set(sub.value) == {"Voltage", "Current"}
    root_text = await call(client, NAME, "/", "GetText")
    assert root_text.body[0].value["Dc/0/Voltage"] == "53.12V"


async def test_unknown_path_is_an_error(connect):
    await make_service(connect)
    reply = await call(await connect(), NAME, "/No/Such/Path", "GetValue")
    assert reply.message_type is MessageType.ERROR


async def test_publish_sends_one_items_changed_and_properties_changed(connect):
    svc = await make_service(connect)
    rec = await SignalRecorder(await connect()).start(NAME)
    svc["/Dc/0/Voltage"] = 53.5
    svc["/Dc/0/Current"] = -3.0
    svc["/ProductName"] = "aggbatt test"  # unchanged: must not be sent
    assert svc.publish() == 2
    await rec.wait_for(lambda: len(rec.of("PropertiesChanged")) == 2 and rec.of("ItemsChanged"))
    items = rec.of("ItemsChanged")
    assert len(items) == 1
    assert items[0].path == "/"
    assert set(items[0].body[0]) == {"/Dc/0/Voltage", "/Dc/0/Current"}
    props = {m.path: m.body[0] for m in rec.of("PropertiesChanged")}
    assert props["/Dc/0/Current"]["Value"] == Variant("d", -3.0)
    assert props["/Dc/0/Current"]["Text"] == Variant("s", "-3.00A")
    assert svc.publish() == 0


async def test_float_noise_below_resolution_is_not_a_change(connect):
    svc = await make_service(connect)
    svc["/Dc/0/Voltage"] = 53.1201
    assert svc.publish() == 0


async def test_invalidating_a_value_is_sent_as_empty_array(connect):
    svc = await make_service(connect, signals="items")
    rec = await SignalRecorder(await connect()).start(NAME)
    svc["/Dc/0/Voltage"] = None
    svc.publish()
    await rec.wait_for(lambda: rec.of("ItemsChanged"))
    entry = rec.of("ItemsChanged")[0].body[0]["/Dc/0/Voltage"]
    assert entry["Value"].signature == "ai" and entry["Value"].value == []
    assert entry["Text"].value == "---"
    assert not rec.of("PropertiesChanged")


async def test_set_value_codes(connect):
    svc = await make_service(connect)
    client = await connect()
    assert await set_value(client, NAME, "/Dc/0/Voltage", Variant("d", 1.0)) == 1
    assert await set_value(client, NAME, "/CustomName", Variant("s", "3")) == 0
    assert await set_value(client, NAME, "/CustomName", Variant("i", 4)) == 1  # text only
    assert await set_value(client, NAME, "/CustomName", Variant("as", ["4"])) == 1
    assert svc["/CustomName"] == "3"
    assert await set_value(client, NAME, "/CustomName", Variant("s", "forbidden")) == 2
    assert svc["/CustomName"] == "3"
    assert await set_value(client, NAME, "/CustomName", Variant("s", "Bank")) == 0
    assert svc["/CustomName"] == "Bank"
    calls = len(svc.accepted)  # type: ignore[attr-defined]
    assert await set_value(client, NAME, "/CustomName", Variant("s", "Bank")) == 0
    assert len(svc.accepted) == calls  # type: ignore[attr-defined]  # unchanged: no callback


async def test_accepted_set_value_emits_signal(connect):
    await make_service(connect)
    client = await connect()
    rec = await SignalRecorder(await connect()).start(NAME)
    assert await set_value(client, NAME, "/CustomName", Variant("s", "Shed bank")) == 0
    await rec.wait_for(lambda: rec.of("PropertiesChanged"))
    assert rec.of("PropertiesChanged")[0].body[0]["Value"] == Variant("s", "Shed bank")


async def test_second_instance_is_refused(connect):
    await make_service(connect)
    with pytest.raises(ServiceNameTaken, match="already on the bus"):
        await make_service(connect)


async def name_has_owner(client, name: str) -> bool:
    reply = await client.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                      interface="org.freedesktop.DBus", member="NameHasOwner",
                                      signature="s", body=[name]))
    return reply.body[0]


async def test_name_is_claimed_only_on_register(connect):
    svc = BusItemService(await connect(), NAME + "2")
    svc.add_path("/DeviceInstance", 1, kind=int)
    client = await connect()
    assert not await name_has_owner(client, NAME + "2")
    await svc.register()
    assert await name_has_owner(client, NAME + "2")


async def test_introspect_lists_children(connect):
    await make_service(connect)
    client = await connect()
    reply = await asyncio.wait_for(client.call(Message(
        destination=NAME, path="/Dc", interface="org.freedesktop.DBus.Introspectable",
        member="Introspect")), 5)
    assert '<node name="0"/>' in reply.body[0]
