"""The connection life cycle every simulated device shares, and how its paths are published.

Each device owns one dbus-fast connection and claims its well-known name only after every path
exists (victron-contract §1.1). Faults are flags that `publish()` honours, so they can be switched
at any time, in any order: frozen (on the bus, silent), hung (silent and answering no call),
vanished (connection closed), invalidated paths, raw overrides (published bypassing the path's
type). Two more shape what GetItems sees: a driver that answers it with an error or late (busy at
boot, or wedged for good), and one that lists a huge number of extra paths (a driver publishing
whole configuration trees).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from aggbatt.bus.connection import open_bus
from aggbatt.bus.service import (
    BusItemService,
    ServiceNameTaken,
    SignalStyle,
    TextFormatter,
)

log = logging.getLogger(__name__)

# How long a vanished service's name may stay owned before the daemon has processed the closed
# socket; reappear retries the name claim for this long.
_NAME_RELEASE_TIMEOUT = 2.0

_instances = itertools.count(100)

GetItemsFault = Literal["error", "hang"]
# Where extra paths go: a namespace the aggregate reads from, so they also weigh on its match rules.
EXTRA_PREFIX = "/Info/Config/Extra"


@dataclass(frozen=True)
class PathSpec:
    """How one path is published: its wire type, rounding and GetText format."""

    path: str
    kind: type
    decimals: int | None = None
    text: TextFormatter | None = None
    writeable: bool = False


def _raw(value: Any) -> Any:
    """An override value as it goes on the wire: NaN/inf stay doubles instead of turning invalid."""
    if isinstance(value, float) and not math.isfinite(value):
        return Variant("d", value)
    return value


def _swallow_calls(msg: Message) -> bool:
    """Mark every method call handled without a reply, so the caller waits in vain."""
    return msg.message_type is MessageType.METHOD_CALL


def _full_text(value: Any) -> Any:
    """Override text as a ready Variant: the publisher cuts plain text, and a hostile device
    must be able to send all of it."""
    return Variant("s", value) if isinstance(value, str) else value


class SimDevice:
    """One simulated service on its own connection, with the faults every device supports.

    Subclasses give `service_name`, `_specs()` (all paths) and `_values()` (their present values).
    """

    signals: SignalStyle = "both"

    def __init__(self, service_name: str, custom_name: str | None) -> None:
        self.service_name = service_name
        self.custom_name = custom_name or ""
        self.unique_name: str | None = None
        self.written: dict[str, Any] = {}
        self._address: str | None = None
        self._bus: MessageBus | None = None
        self._svc: BusItemService | None = None
        self._frozen = False
        self._hung = False
        self._invalid: set[str] = set()
        self._overrides: dict[str, Any] = {}
        self._spec_by_path: dict[str, PathSpec] = {}
        self._get_items_fault: GetItemsFault | None = None
        self._held_calls: list[Message] = []
        self._extra_paths = 0

    # ----- to be provided by each device ------------------------------------------------------

    def _specs(self) -> Iterable[PathSpec]:
        raise NotImplementedError

    def _values(self) -> dict[str, Any]:
        raise NotImplementedError

    # ----- life cycle ---------------------------------------------------------------------------

    @property
    def online(self) -> bool:
        """Whether the service is on the bus."""
        return self._svc is not None

    @property
    def frozen(self) -> bool:
        return self._frozen

    async def start(self, bus_address: str) -> None:
        """Open an own connection, create every path, then claim the name."""
        if self._svc is not None:
            return
        self._address = bus_address
        bus = await open_bus(bus_address)
        # Ahead of the service's own handler, so a GetItems fault wins over the normal answer.
        bus.add_message_handler(self._get_items)
        svc = BusItemService(bus, self.service_name, signals=self.signals)
        values = self.current_values()
        for spec in self._paths().values():
            self._add(svc, spec, values.get(spec.path))
        self._add_extra(svc, 0)
        try:
            await self._claim(svc)
        except BaseException:
            bus.disconnect()
            raise
        self._bus, self._svc, self.unique_name = bus, svc, bus.unique_name

    async def stop(self) -> None:
        """Close the connection; the name disappears from the bus."""
        bus, self._bus, self._svc, self.unique_name = self._bus, None, None, None
        self._hung = False
        self._held_calls.clear()
        if bus is None:
            return
        bus.disconnect()
        try:
            await asyncio.wait_for(bus.wait_for_disconnect(), _NAME_RELEASE_TIMEOUT)
        except Exception:
            log.debug("%s: disconnect did not complete cleanly", self.service_name, exc_info=True)

    async def vanish(self) -> None:
        """The driver dies: the connection closes and the name is released."""
        await self.stop()

    async def reappear(self) -> None:
        """The driver restarts: a new connection (new unique name), same well-known name.

        A device that was never started has no bus to return to and stays off it, so a scenario
        can also be replayed on a bank that only simulates physics.
        """
        if self._address is not None:
            await self.start(self._address)

    @staticmethod
    async def _claim(svc: BusItemService) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _NAME_RELEASE_TIMEOUT
        while True:
            try:
                await svc.register()
                return
            except ServiceNameTaken:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.01)

    def _add(self, svc: BusItemService, spec: PathSpec, value: Any) -> None:
        if spec.path in self._overrides:
            svc.add_path(spec.path, _full_text(value))
        else:
            svc.add_path(spec.path, value, kind=spec.kind, decimals=spec.decimals, text=spec.text,
                         writeable=spec.writeable, on_change=self._remote_write)

    def _remote_write(self, path: str, value: Any) -> bool:
        if path == "/CustomName":
            self.custom_name = "" if value is None else str(value)
        else:
            self.written[path] = value
        return True

    # ----- publishing ---------------------------------------------------------------------------

    def current_values(self) -> dict[str, Any]:
        """Every path as the device would publish it now, faults applied (for bus-less runs)."""
        values = self._values()
        values.update(self.written)
        for path in self._invalid:
            values[path] = None
        for path, raw in self._overrides.items():
            values[path] = raw
        return values

    def publish(self) -> int:
        """Send what changed since the last publish; nothing while frozen or vanished."""
        svc = self._svc
        if svc is None or self._frozen:
            return 0
        values = self.current_values()
        for path in self._overrides:
            values[path] = _full_text(values[path])
        svc.update(values)
        return svc.publish()

    # ----- faults -------------------------------------------------------------------------------

    def freeze(self, on: bool = True) -> None:
        """Stay on the bus but stop sending (frozen data; the driver still answers calls)."""
        self._frozen = on

    def hang(self, on: bool = True) -> None:
        """A hung driver: on the bus, sends nothing and answers no call (not even an error)."""
        self._frozen = on
        bus, svc = self._bus, self._svc
        if bus is None or svc is None or on == self._hung:
            return
        self._hung = on
        if on:
            bus.remove_message_handler(svc._handle)
            bus.add_message_handler(_swallow_calls)
        else:
            bus.remove_message_handler(_swallow_calls)
            bus.add_message_handler(svc._handle)

    def invalidate(self, path: str, on: bool = True) -> None:
        """Publish `path` as invalid (empty array) until called with on=False."""
        self._check_path(path)
        if on:
            self._invalid.add(path)
        else:
            self._invalid.discard(path)

    def set_override(self, path: str, value: Any | None) -> None:
        """Publish a raw value on `path`, bypassing its type (garbage, NaN, absurd numbers)."""
        spec = self._check_path(path)
        if value is None:
            if self._overrides.pop(path, None) is None:
                return
        else:
            self._overrides[path] = _raw(value)
        svc = self._svc
        if svc is not None:
            svc.remove_path(path)
            self._add(svc, spec, self.current_values().get(path))

    def fail_get_items(self, fault: GetItemsFault | None) -> None:
        """Answer GetItems with an error ("error"), or hold it ("hang") until called with None;
        every other call is answered as usual.

        Held calls are answered when the fault ends, as a driver whose main loop was blocked
        works through its queue: a caller that gave up meanwhile just drops the late reply.
        """
        self._get_items_fault = fault
        if fault is None:
            held, self._held_calls = self._held_calls, []
            if self._svc is not None and self._bus is not None:
                for msg in held:
                    self._bus.send(Message.new_method_return(msg, "a{sa{sv}}", [self._svc.items()]))

    def add_extra_paths(self, count: int) -> None:
        """Publish `count` more constant paths under EXTRA_PREFIX (they never change, so they
        cost signals nothing, only GetItems replies)."""
        before, self._extra_paths = self._extra_paths, self._extra_paths + count
        if self._svc is not None:
            self._add_extra(self._svc, before)

    def _add_extra(self, svc: BusItemService, start: int) -> None:
        for n in range(start, self._extra_paths):
            svc.add_path(f"{EXTRA_PREFIX}{n}", n, kind=int)

    def _get_items(self, msg: Message) -> Message | bool | None:
        fault = self._get_items_fault
        if fault is None or msg.message_type is not MessageType.METHOD_CALL:
            return None
        if msg.path != "/" or msg.member != "GetItems":
            return None
        if fault == "error":
            return Message.new_error(msg, "org.freedesktop.DBus.Error.Failed",
                                     "simulated: GetItems failed")
        self._held_calls.append(msg)
        return True

    def has_path(self, path: str) -> bool:
        return path in self._paths()

    def _paths(self) -> dict[str, PathSpec]:
        if not self._spec_by_path:
            self._spec_by_path = {spec.path: spec for spec in self._specs()}
        return self._spec_by_path

    def _check_path(self, path: str) -> PathSpec:
        spec = self._paths().get(path)
        if spec is None:
            raise KeyError(f"{self.service_name} has no path {path!r}")
        return spec


def mandatory_specs(firmware_kind: type = str) -> list[PathSpec]:
    """The generic paths every device service carries (victron-contract §3.1); serialbattery publishes
    its firmware as a string, Victron products as an int."""
    return [
        PathSpec("/Mgmt/ProcessName", str),
        PathSpec("/Mgmt/ProcessVersion", str),
        PathSpec("/Mgmt/Connection", str),
        PathSpec("/DeviceInstance", int),
        PathSpec("/ProductId", int, text=lambda v: f"0x{v:X}"),
        PathSpec("/ProductName", str),
        PathSpec("/FirmwareVersion", firmware_kind),
        PathSpec("/HardwareVersion", str),
        PathSpec("/Connected", int),
        PathSpec("/CustomName", str, writeable=True),
        PathSpec("/Serial", str),
    ]


def process_version() -> str:
    return f"Python {platform.python_version()}"


def next_device_instance() -> int:
    """A DeviceInstance no other simulated device of this process was given by default."""
    return next(_instances)
