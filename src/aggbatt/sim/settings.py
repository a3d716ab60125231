"""A simulated com.victronenergy.settings (localsettings) for tests and the demo.

Behaves like localsettings where aggbatt depends on it (docs/victron-contract.md §1.4, §1.6, §3.2):

- Every setting is a BusItem leaf answering GetValue/GetText/SetValue; `/` answers GetItems and
  `/` plus groups answer GetValue with the sub-tree. Changes are signalled with PropertiesChanged
  only, as localsettings does.
- Interface com.victronenergy.Settings on `/` and on groups: AddSettings (aa{sv} -> aa{sv}, items
  {"path", "error", "value"}) and AddSetting / AddSilentSetting (s group, s name, v default,
  s type, v min, v max -> i). The type comes from the default (D-Bus i/x -> 'i', d -> 'f',
  s -> 's'); on `/` paths must be absolute under /Settings/, on a group they are relative to it.
  An existing setting keeps its value; localsettings' error codes (-2 .. -9) are returned.
- SetValue converts to the setting's type and answers -1 when that fails or the value is outside
  min..max. /Settings/Devices/<uid>/ClassAndVrmInstance values are unique per class: a taken
  class:instance is bumped to the next free instance, on AddSettings and on SetValue alike.
- With `state_file`, every change is written as JSON atomically (temp + fsync + rename + dir
  fsync) and loaded by `start()`, so a restarted simulator finds its values again.
- `delay` holds back every reply by that many seconds (a busy GX); in that mode calls this
  simulator does not implement (e.g. Introspect) are answered with UnknownMethod.
- `freeze()` holds every call unanswered until `thaw()` answers them in the order they came (a
  hung localsettings that recovers). `calls` counts the calls received per (member, path).

Not simulated: RemoveSettings, GetMin/GetMax/GetDefault/GetAttributes, Min/Max/Default in
GetItems, the 2 s write delay and the XML file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

from dbus_fast import ErrorType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.validators import is_object_path_valid

from aggbatt.bus.busitem import BUSITEM
from aggbatt.bus.service import BusItemService
from aggbatt.bus.values import unwrap, wrap

SETTINGS_SERVICE = "com.victronenergy.settings"
SETTINGS_INTERFACE = "com.victronenergy.Settings"
STATE_VERSION = 1

_KINDS: dict[str, type] = {"i": int, "f": float, "s": str}
_LETTER_OF_SIGNATURE = {"i": "i", "x": "i", "d": "f", "s": "s"}
_ALWAYS_GROUPS = frozenset({"/", "/Settings", "/Settings/Devices"})

log = logging.getLogger(__name__)


@dataclass
class _Setting:
    type: str
    default: Any
    min: Any = None
    max: Any = None
    silent: bool = False


def _convert(kind: str, value: Any) -> Any:
    """localsettings' convertToType: int()/float()/str(), None when that fails."""
    if value is None or isinstance(value, (list, dict)):
        return None
    try:
        converted = _KINDS[kind](value)
    except (TypeError, ValueError, OverflowError):
        return None
    if isinstance(converted, float) and (math.isnan(converted) or math.isinf(converted)):
        return None
    return converted


def _kind_of(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"a setting is int, float or str, not {value!r}")
    return "s" if isinstance(value, str) else "f" if isinstance(value, float) else "i"


def _is_instance_path(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 5 and parts[1:3] == ["Settings", "Devices"] and parts[4] == "ClassAndVrmInstance"


class SimSettings:
    """The simulated settings service on its own connection `bus`; see the module docstring."""

    def __init__(self, bus: MessageBus, state_file: str | None = None,
                 initial: Mapping[str, Any] = MappingProxyType({}), delay: float = 0.0, *,
                 add_settings: bool = True) -> None:
        """`initial`: settings that exist before anyone adds them (e.g. systemcalc's);
        `add_settings=False` simulates an old localsettings without AddSettings."""
        self.bus = bus
        self.state_file = state_file
        self.delay = delay
        self.add_settings_supported = add_settings
        self.values: dict[str, Any] = {}
        self._settings: dict[str, _Setting] = {}
        for path, value in initial.items():
            self._settings[path] = _Setting(_kind_of(value), value)
            self.values[path] = value
        self._svc: BusItemService | None = None
        self._closed = False
        self.calls: Counter[tuple[str, str]] = Counter()
        self._held: list[Message] | None = None

    async def start(self) -> None:
        self._load()
        self._save()
        # Our handler must run before BusItemService's: it answers every call to this service.
        self.bus.add_message_handler(self._on_call)
        self._svc = BusItemService(self.bus, SETTINGS_SERVICE, signals="properties")
        for path, value in self.values.items():
            self._svc.add_path(path, value, kind=_KINDS[self._settings[path].type])
        await self._svc.register()

    async def close(self) -> None:
        """Leave the bus name free for a restarted simulator; the connection stays the caller's."""
        if self._closed:
            return
        self._closed = True
        self.bus.remove_message_handler(self._on_call)
        if self.bus.connected:
            try:
                await asyncio.wait_for(self.bus.release_name(SETTINGS_SERVICE), 5.0)
            except Exception as exc:
                log.debug("release of %s failed: %s", SETTINGS_SERVICE, exc)

    def set_local(self, path: str, value: Any) -> int:
        """Change a setting as the GUI would (SetValue rules, PropertiesChanged); create it if new."""
        if path in self._settings:
            return self._set(path, value)
        self._settings[path] = _Setting(_kind_of(value), value)
        self._store(path, value, new=True)
        return 0

    # ----- calls -----------------------------------------------------------------------------

    def _on_call(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL or self._closed:
            return None
        if msg.destination not in (SETTINGS_SERVICE, self.bus.unique_name):
            return None
        self.calls[(msg.member or "", msg.path or "")] += 1
        if self._held is not None:
            self._held.append(msg)
            return True
        if self.delay > 0:
            asyncio.get_running_loop().call_later(self.delay, self._answer_late, msg)
            return True
        return self._answer(msg)

    def freeze(self) -> None:
        if self._held is None:
            self._held = []

    def thaw(self) -> None:
        held, self._held = self._held or [], None
        for msg in held:
            self._answer_late(msg)

    def _answer_late(self, msg: Message) -> None:
        if self._closed or not self.bus.connected or msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return
        reply = self._answer(msg) or Message.new_error(
            msg, ErrorType.UNKNOWN_METHOD, f"{msg.interface}.{msg.member} is not simulated")
        self.bus.send(reply)

    def _answer(self, msg: Message) -> Message | None:
        path, member, interface = msg.path, msg.member, msg.interface
        if path is None:  # never for a method call: D-Bus requires its object path
            return None
        if interface in (SETTINGS_INTERFACE, None) and self._is_group(path):
            if member == "AddSettings" and msg.signature == "aa{sv}" and self.add_settings_supported:
                added = [self._add_item(path, definition) for definition in msg.body[0]]
                return Message.new_method_return(msg, "aa{sv}", [added])
            if member in ("AddSetting", "AddSilentSetting") and msg.signature == "ssvsvv":
                group, name, default, letter, low, high = msg.body
                relative = group if group.startswith("/") or not group else "/" + group
                relative += name if name.startswith("/") else "/" + name
                code, _ = self._add(path, relative, letter, unwrap(default), unwrap(low),
                                    unwrap(high), member == "AddSilentSetting")
                return Message.new_method_return(msg, "i", [code])
        if interface not in (BUSITEM, None):
            return None
        if path in self._settings:
            if member == "GetValue":
                return Message.new_method_return(msg, "v", [wrap(self.values[path])])
            if member == "GetText":
                return Message.new_method_return(msg, "s", [str(self.values[path])])
            if member == "SetValue" and msg.signature == "v":
                return Message.new_method_return(msg, "i", [self._set(path, unwrap(msg.body[0]))])
            return None
        if member == "GetItems" and path == "/":
            items = {p: {"Value": wrap(v), "Text": Variant("s", str(v))} for p, v in self.values.items()}
            return Message.new_method_return(msg, "a{sa{sv}}", [items])
        if member == "GetValue" and self._is_group(path):
            prefix = "/" if path == "/" else path + "/"
            tree = {p[len(prefix):]: wrap(v) for p, v in self.values.items() if p.startswith(prefix)}
            return Message.new_method_return(msg, "v", [Variant("a{sv}", tree)])
        return None

    # ----- settings logic ----------------------------------------------------------------------

    def _is_group(self, path: str) -> bool:
        return path in _ALWAYS_GROUPS or any(p.startswith(path + "/") for p in self._settings)

    def _add_item(self, base: str, definition: dict[str, Variant]) -> dict[str, Variant]:
        path = definition.get("path")
        if path is None or path.signature != "s":
            return {"error": Variant("i", -4)}
        result = {"path": path}
        default = definition.get("default")
        letter = _LETTER_OF_SIGNATURE.get(default.signature) if default is not None else None
        if letter is None:
            result["error"] = Variant("i", -3)
            return result
        low, high, silent = (unwrap(definition.get(k)) for k in ("min", "max", "silent"))
        code, full = self._add(base, path.value, letter, unwrap(default), low, high, bool(silent))
        result["error"] = Variant("i", code)
        if full is not None:
            result["value"] = wrap(self.values[full])
        return result

    def _add(self, base: str, relative: str, letter: str, default: Any, low: Any, high: Any,
             silent: bool) -> tuple[int, str | None]:
        if base == "/":
            if not relative.startswith("/Settings/"):
                return -9, None
            full = relative
        else:
            full = base + "/" + relative.lstrip("/")
        if "/_" in full:
            return -2, None
        if letter not in _KINDS:
            return -3, None
        parents = ["/".join(full.split("/")[:i]) for i in range(2, full.count("/") + 1)]
        if not is_object_path_valid(full) or any(p in self._settings for p in parents):
            return -4, None
        value = _convert(letter, default)
        if value is None:
            return -6, None
        if letter == "s":
            low = high = None
        else:
            low, high = _convert(letter, low), _convert(letter, high)
            if low == 0 and high == 0:
                low = high = None
            if (low is not None and value < low) or (high is not None and value > high):
                return -7, None
        if self._is_group(full):
            return -8, None
        setting = _Setting(letter, value, low, high, silent)
        existing = self._settings.get(full)
        if existing is not None:
            if existing.type != letter:
                return -5, None
            if existing != setting:
                self._settings[full] = setting
                self._save()
            return 0, full
        if _is_instance_path(full):
            value = self._free_instance(full, value)
            if value is None:
                return -6, None
        self._settings[full] = setting
        self._store(full, value, new=True)
        return 0, full

    def _set(self, path: str, raw: Any) -> int:
        setting = self._settings[path]
        value = _convert(setting.type, raw)
        if value is None:
            return -1
        if (setting.min is not None and value < setting.min) or (
                setting.max is not None and value > setting.max):
            return -1
        if value == self.values[path]:
            return 0
        if _is_instance_path(path):
            value = self._free_instance(path, value)
            if value is None:
                return -1
        self._store(path, value)
        return 0

    def _free_instance(self, path: str, value: Any) -> str | None:
        """The class:instance itself if free, else the next free instance of that class."""
        parts = value.split(":") if isinstance(value, str) else []
        if len(parts) != 2:
            return None
        try:
            instance = int(parts[1])
        except ValueError:
            return None
        taken = {v for p, v in self.values.items() if p != path and _is_instance_path(p)}
        candidate: str = value
        while candidate in taken:
            instance += 1
            candidate = f"{parts[0]}:{instance}"
        return candidate

    def _store(self, path: str, value: Any, *, new: bool = False) -> None:
        self.values[path] = value
        if self._svc is not None:
            if new:
                self._svc.add_path(path, value, kind=_KINDS[self._settings[path].type])
            else:
                self._svc[path] = value
            self._svc.publish()
        self._save()

    # ----- persistence -------------------------------------------------------------------------

    def _save(self) -> None:
        if self.state_file is None:
            return
        settings = {p: {**asdict(s), "value": self.values[p]} for p, s in self._settings.items()}
        data = {"version": STATE_VERSION, "settings": settings}
        directory = os.path.dirname(os.path.abspath(self.state_file))
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".settings-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.state_file)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _load(self) -> None:
        if self.state_file is None or not os.path.exists(self.state_file):
            return
        try:
            with open(self.state_file) as handle:
                data = json.load(handle)
            entries = data["settings"].items()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("settings state %s unreadable (%s); starting without it", self.state_file, exc)
            return
        for path, entry in entries:
            try:
                setting = _Setting(entry["type"], entry["default"], entry.get("min"),
                                   entry.get("max"), bool(entry.get("silent")))
                value = _convert(setting.type, entry["value"])
            except (KeyError, TypeError):
                value = None
            if value is None or not is_object_path_valid(path):
                log.warning("settings state: skipping invalid entry %s", path)
                continue
            self._settings[path] = setting
            self.values[path] = value
