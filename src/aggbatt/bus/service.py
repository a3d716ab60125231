"""Publish one Victron BusItem service on its own dbus-fast connection.

Theory of operation (docs/victron-contract.md §1 and §6.1):

- Every path answers GetValue/GetText/SetValue on interface com.victronenergy.BusItem; `/` also
  answers GetItems, and `/` plus every intermediate node answer GetValue/GetText for their sub-tree
  (velib's behaviour, which flashmq and older scanners fall back to).
- Calls are answered from one message handler over a dict of paths instead of one exported
  ServiceInterface per path: dbus-fast broadcasts InterfacesAdded for every export and looks up
  exports by scanning, both of which cost a 1 GHz GX core for nothing.
- Local writes only record the new value. `publish()` sends what changed since the last publish:
  one ItemsChanged on `/` and, depending on `signals`, a PropertiesChanged per changed path.
  Signals are built as raw messages with NO_REPLY_EXPECTED because some peers reply to signals
  without it (aiovelib 0f44690).
- The bus name is requested only by `register()`, after all paths exist, with DO_NOT_QUEUE so a
  second instance fails loudly instead of waiting silently in the queue.
- A value the wire cannot carry (an integer beyond 64 bits, text with NUL or unpaired surrogates)
  is stored as invalid, with one warning per path: one bad value must never make GetItems, and so
  the whole service, unreadable.
- Text values are cut to PUBLISHED_TEXT_MAX characters: whatever a caller or a client passes,
  the service never republishes more.
- GetItems on `/` is answered from a body marshalled once and kept until a value or the set of
  paths changes: consumers (GUI, MQTT bridges) may ask several times a second, and building and
  marshalling every path each time costs far more than the daemon's whole tick.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dbus_fast import (
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus

from aggbatt.bus.busitem import BUSITEM
from aggbatt.bus.values import unwrap, wrap
from aggbatt.errors import AggbattError

INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
INVALID_TEXT = "---"

SignalStyle = Literal["both", "items", "properties"]
TextFormatter = Callable[[Any], str]
ChangeCallback = Callable[[str, Any], bool]

# SetValue return codes as velib sends them (victron-contract §1.6).
SET_OK = 0
SET_NOT_WRITEABLE = 1
SET_REJECTED = 2

PUBLISHED_TEXT_MAX = 256

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# D-Bus allows 32 nested containers; a published value needs a handful.
_MAX_VALUE_NESTING = 8

log = logging.getLogger(__name__)


class ServiceNameTaken(AggbattError, RuntimeError):
    """The well-known name is owned by another connection."""


@dataclass
class _Item:
    value: Any
    kind: type | None
    decimals: int | None
    text: TextFormatter | None
    writeable: bool
    on_change: ChangeCallback | None


def unit_text(unit: str, decimals: int) -> TextFormatter:
    """A GetText formatter like serialbattery's, e.g. unit_text("V", 2) -> "53.12V"."""
    return lambda value: f"{value:.{decimals}f}{unit}"


class BusItemService:
    """One published Victron service; see the module docstring for the wire behaviour."""

    def __init__(self, bus: MessageBus, name: str, *, signals: SignalStyle = "both") -> None:
        self.bus = bus
        self.name = name
        self.signals = signals
        self._items: dict[str, _Item] = {}
        self._dirty: dict[str, None] = {}
        self._nodes: set[str] = {"/"}
        self._unsendable_logged: set[str] = set()
        # The marshalled GetItems body while no value has changed (module docstring).
        self._items_body: bytes | None = None
        self.registered = False
        bus.add_message_handler(self._handle)

    # ----- building the tree -------------------------------------------------------------

    def add_path(
        self,
        path: str,
        value: Any = None,
        *,
        kind: type | None = None,
        decimals: int | None = None,
        text: TextFormatter | None = None,
        writeable: bool = False,
        on_change: ChangeCallback | None = None,
    ) -> None:
        if not path.startswith("/") or path == "/" or path.endswith("/"):
            raise ValueError(f"not a BusItem path: {path!r}")
        item = _Item(None, kind, decimals, text, writeable, on_change)
        item.value = self._sendable(path, self._coerce(item, value))
        self._items[path] = item
        self._items_body = None
        parts = path.split("/")
        for depth in range(2, len(parts)):
            self._nodes.add("/".join(parts[:depth]))
        if self.registered:
            self._dirty[path] = None

    def remove_path(self, path: str) -> None:
        """Remove a path; like velib, nothing is emitted (victron-contract §1.7)."""
        self._items.pop(path, None)
        self._dirty.pop(path, None)
        self._items_body = None

    def paths(self) -> Iterable[str]:
        return self._items.keys()

    def __contains__(self, path: str) -> bool:
        return path in self._items

    def __getitem__(self, path: str) -> Any:
        return self._items[path].value

    def __setitem__(self, path: str, value: Any) -> None:
        item = self._items[path]
        new = self._sendable(path, self._coerce(item, value))
        if new != item.value or type(new) is not type(item.value):
            item.value = new
            self._dirty[path] = None
            self._items_body = None

    def update(self, values: Mapping[str, Any]) -> None:
        for path, value in values.items():
            self[path] = value

    async def register(self) -> None:
        """Claim the bus name; raise ServiceNameTaken when another process owns it."""
        reply = await self.bus.request_name(self.name, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise ServiceNameTaken(
                f"{self.name} is already on the bus: another instance is running; stop it first"
            )
        self.registered = True
        self._dirty.clear()

    # ----- publishing ----------------------------------------------------------------------

    def publish(self) -> int:
        """Send the changes since the last publish; return how many paths changed."""
        if not self._dirty:
            return 0
        changed = list(self._dirty)
        self._dirty.clear()
        if not self.registered:
            return 0
        entries = {path: self._entry(self._items[path]) for path in changed if path in self._items}
        if not entries:
            return 0
        if self.signals in ("both", "items"):
            self.bus.send(_signal("/", "ItemsChanged", "a{sa{sv}}", entries))
        if self.signals in ("both", "properties"):
            for path, entry in entries.items():
                self.bus.send(_signal(path, "PropertiesChanged", "a{sv}", entry))
        return len(entries)

    # ----- values --------------------------------------------------------------------------

    @staticmethod
    def _coerce(item: _Item, value: Any) -> Any:
        """Give every value of a path the same wire type (aiovelib d8e309c)."""
        if isinstance(value, str) and len(value) > PUBLISHED_TEXT_MAX:
            value = value[:PUBLISHED_TEXT_MAX]
        if value is None or item.kind is None:
            return value
        if item.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"expected a number, got {value!r}")
            number = float(value)
            if math.isnan(number) or math.isinf(number):
                return None
            return round(number, item.decimals) if item.decimals is not None else number
        if item.kind is int:
            if isinstance(value, float):
                if math.isnan(value) or math.isinf(value):
                    return None
                return int(round(value))
            if not isinstance(value, int):
                raise TypeError(f"expected an integer, got {value!r}")
            return int(value)
        if item.kind is str:
            return str(value)[:PUBLISHED_TEXT_MAX]
        return value

    def _sendable(self, path: str, value: Any) -> Any:
        """`value`, or None (invalid) when D-Bus cannot carry it; see the module docstring."""
        if _fits_wire(value, 0):
            return value
        if path not in self._unsendable_logged:
            self._unsendable_logged.add(path)
            shown = repr(value)
            log.warning("%s: %s cannot be sent on D-Bus; publishing it as invalid", path,
                        shown if len(shown) <= 80 else shown[:77] + "...")
        return None

    def text_of(self, path: str) -> str:
        return self._text(self._items[path])

    @staticmethod
    def _text(item: _Item) -> str:
        if item.value is None:
            return INVALID_TEXT
        if item.text is not None:
            try:
                return item.text(item.value)
            except (TypeError, ValueError):
                return str(item.value)
        return str(item.value)

    def _entry(self, item: _Item) -> dict[str, Variant]:
        return {"Value": wrap(item.value), "Text": Variant("s", self._text(item))}

    def items(self) -> dict[str, dict[str, Variant]]:
        """What GetItems answers: every path with its Value and Text."""
        return {p: self._entry(it) for p, it in self._items.items()}

    def _subtree(self, node: str) -> dict[str, _Item]:
        prefix = "/" if node == "/" else node + "/"
        return {p[len(prefix) :]: it for p, it in self._items.items() if p.startswith(prefix)}

    # ----- incoming calls ------------------------------------------------------------------

    def _handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL:
            return None
        if msg.interface == INTROSPECTABLE and msg.member == "Introspect":
            return self._introspect(msg)
        if msg.interface not in (BUSITEM, None):
            return None
        path = msg.path
        if path is None:  # never for a method call: D-Bus requires its object path
            return None
        item = self._items.get(path)
        member = msg.member
        if item is not None:
            if member == "GetValue":
                return Message.new_method_return(msg, "v", [wrap(item.value)])
            if member == "GetText":
                return Message.new_method_return(msg, "s", [self._text(item)])
            if member == "SetValue" and msg.signature == "v":
                return Message.new_method_return(msg, "i", [self._remote_set(path, item, msg.body[0])])
            return None
        if path == "/" and member == "GetItems":
            return self._get_items(msg)
        if path in self._nodes:
            sub = self._subtree(path)
            if member == "GetValue":
                values = {p: wrap(it.value) for p, it in sub.items()}
                return Message.new_method_return(msg, "v", [Variant("a{sv}", values)])
            if member == "GetText":
                texts = {p: self._text(it) for p, it in sub.items()}
                return Message.new_method_return(msg, "v", [Variant("a{ss}", texts)])
        return None

    def _get_items(self, msg: Message) -> bool:
        body = self._items_body
        if body is None:
            raw = Message.new_method_return(msg, ITEMS_SIGNATURE, [self.items()])._marshall(False)
            body = self._items_body = bytes(raw[len(raw) - _body_length(raw):])
        # dbus-fast sends only plain Messages a handler returns; a truthy answer marks it handled.
        self.bus.send(_MarshalledReply(msg, body))
        return True

    def _remote_set(self, path: str, item: _Item, variant: Variant) -> int:
        if not item.writeable:
            return SET_NOT_WRITEABLE
        raw = unwrap(variant)
        # A text path takes text only: str() would turn a number or an array into a name.
        if item.kind is str and not isinstance(raw, str):
            return SET_NOT_WRITEABLE
        try:
            value = self._coerce(item, raw)
        except (TypeError, ValueError):
            return SET_NOT_WRITEABLE
        if value == item.value and type(value) is type(item.value):
            return SET_OK
        if item.on_change is not None:
            try:
                accepted = item.on_change(path, value)
            except Exception:
                log.exception("SetValue callback for %s failed", path)
                accepted = False
            if not accepted:
                return SET_REJECTED
        item.value = value
        self._dirty[path] = None
        self._items_body = None
        self.publish()
        return SET_OK

    def _introspect(self, msg: Message) -> Message | None:
        path = msg.path
        if path not in self._nodes and path not in self._items:
            return None
        prefix = "/" if path == "/" else path + "/"
        children = sorted(
            {p[len(prefix) :].split("/", 1)[0] for p in self._items if p.startswith(prefix)}
        )
        nodes = "".join(f'<node name="{c}"/>' for c in children)
        xml = (
            '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" '
            '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">'
            f'<node><interface name="{BUSITEM}">'
            '<method name="GetValue"><arg direction="out" type="v"/></method>'
            '<method name="GetText"><arg direction="out" type="s"/></method>'
            '<method name="SetValue"><arg direction="in" type="v"/><arg direction="out" type="i"/></method>'
            + (
                '<method name="GetItems"><arg direction="out" type="a{sa{sv}}"/></method>'
                '<signal name="ItemsChanged"><arg type="a{sa{sv}}"/></signal>'
                if path == "/"
                else '<signal name="PropertiesChanged"><arg type="a{sv}"/></signal>'
            )
            + f"</interface>{nodes}</node>"
        )
        return Message.new_method_return(msg, "s", [xml])


def _fits_wire(value: Any, depth: int) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return True
    if isinstance(value, int):
        return _INT64_MIN <= value <= _INT64_MAX
    if isinstance(value, str):
        return _fits_text(value)
    if depth >= _MAX_VALUE_NESTING:
        return False
    if isinstance(value, dict):
        return all(_fits_text(str(k)) and _fits_wire(v, depth + 1)
                   for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_fits_wire(v, depth + 1) for v in value)
    return isinstance(value, Variant)


def _fits_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


ITEMS_SIGNATURE = "a{sa{sv}}"
# dbus-fast marshals little-endian; the fixed header holds the body length at byte 4.
_BODY_LENGTH = struct.Struct("<I")


def _body_length(raw: bytearray | bytes) -> int:
    return int(_BODY_LENGTH.unpack_from(raw, 4)[0])


class _MarshalledReply(Message):
    """The GetItems reply with a body marshalled earlier: only the header (this call's serial and
    destination) is built per call, from the same reply with an empty body."""

    def __init__(self, call: Message, body: bytes) -> None:
        super().__init__(message_type=MessageType.METHOD_RETURN, reply_serial=call.serial,
                         destination=call.sender, signature=ITEMS_SIGNATURE, body=[{}])
        self._marshalled_body = body

    def _marshall(self, negotiate_unix_fd: bool) -> bytearray:
        raw = super()._marshall(negotiate_unix_fd)
        header = raw[: len(raw) - _body_length(raw)]
        _BODY_LENGTH.pack_into(header, 4, len(self._marshalled_body))
        return header + self._marshalled_body


def _signal(path: str, member: str, signature: str, body: Any) -> Message:
    return Message(
        message_type=MessageType.SIGNAL,
        path=path,
        interface=BUSITEM,
        member=member,
        signature=signature,
        body=[body],
        flags=MessageFlag.NO_REPLY_EXPECTED,
    )

