"""Client of com.victronenergy.settings (localsettings): add our settings, read, write, watch.

Rules (docs/victron-contract.md §1.6, §3.2, §5.6):

- Only settings aggbatt owns are created with AddSettings. Calling AddSettings for a setting
  another component owns (systemcalc's /Settings/SystemSetup/..., ESS's /Settings/CGwacs/...)
  rewrites its default/min/max; foreign settings are only read (`get`) and written (`set`).
- AddSettings on `/` takes absolute paths under /Settings/ and answers per item with an error
  code and the current value, which is kept if the setting exists. Localsettings versions without
  AddSettings answer UnknownMethod; then each setting is added with AddSetting on /Settings and
  read back with GetValue.
- Our DeviceInstance is claimed through /Settings/Devices/<uid>/ClassAndVrmInstance. The value
  localsettings returns is the one to use: it bumps a taken class:instance to the next free one.
- Localsettings signals changes only with PropertiesChanged on the setting's path; `watch`
  matches exactly those (sender com.victronenergy.settings, one rule per path).
- Every call is bounded by `timeout`. A settings service that is absent, hung or too slow raises
  SettingsUnavailable whose message names the service and what to do; no call hangs.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from aggbatt.bus.busitem import BUSITEM, DBUS, DBUS_PATH, CallFailed, call, dbus_message
from aggbatt.bus.values import unwrap, wrap
from aggbatt.errors import AggbattError

SETTINGS_SERVICE = "com.victronenergy.settings"
SETTINGS_INTERFACE = "com.victronenergy.Settings"

_UNREACHABLE = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply",
    "org.freedesktop.DBus.Error.Disconnected",
})
_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"

# AddSetting(s) error codes of localsettings (victron-contract §3.2).
ADD_SETTING_ERRORS = {
    -1: "generic error",
    -2: "a path element starts with an underscore",
    -3: "unsupported type (use int, float or str)",
    -4: "invalid path",
    -5: "the setting already exists with another type",
    -6: "invalid default",
    -7: "default outside min..max",
    -8: "the path is a group, not a setting",
    -9: "the path is not under /Settings/",
}

_PATH_ELEMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*\Z")
_INSTANCE_NUMBER = re.compile(r"-?[0-9]{1,12}\Z")

log = logging.getLogger(__name__)


class SettingsUnavailable(AggbattError, RuntimeError):
    """The settings service is absent, hung or answered nonsense; the message says what to do."""


class UnusableDeviceInstance(SettingsUnavailable):
    """Localsettings answers, but the stored class and instance cannot be used."""


@dataclass(frozen=True)
class SettingSpec:
    """One setting aggbatt owns. min == max == 0 means no limits; strings have none."""

    path: str
    default: int | float | str
    min: int | float = 0
    max: int | float = 0
    silent: bool = False

    def __post_init__(self) -> None:
        if not self.path.startswith("/Settings/"):
            raise ValueError(f"setting path must start with /Settings/: {self.path!r}")
        if isinstance(self.default, bool) or not isinstance(self.default, (int, float, str)):
            raise TypeError(f"{self.path}: default must be int, float or str, not {self.default!r}")

    @property
    def type_letter(self) -> str:
        """The AddSetting type: 'i', 'f' or 's'."""
        if isinstance(self.default, str):
            return "s"
        return "f" if isinstance(self.default, float) else "i"

    def typed(self, value: int | float | str) -> Variant:
        letter = self.type_letter
        if letter == "f":
            return Variant("d", float(value))
        if letter == "i":
            return wrap(int(value))
        return Variant("s", str(value))


def _meaning(code: Any) -> str:
    return ADD_SETTING_ERRORS.get(code, "unknown error") if isinstance(code, int) else "no code"


class SettingsClient:
    """Talks to localsettings on `bus`; see the module docstring for the rules."""

    def __init__(self, bus: MessageBus, *, timeout: float = 5.0,
                 service: str = SETTINGS_SERVICE) -> None:
        self.bus = bus
        self.timeout = timeout
        self.service = service
        self._watched: dict[str, list[Callable[[str, Any], None]]] = {}
        self._last: dict[str, Any] = {}
        self._rules: list[str] = []
        self._owner: str | None = None
        self._owner_changes = 0
        self._handler_added = False
        self._missing_logged: set[str] = set()

    # ----- adding our own settings -----------------------------------------------------------

    async def add_settings(self, specs: Sequence[SettingSpec]) -> dict[str, Any]:
        """Create our settings (existing values are kept); return path -> current value.

        A setting localsettings refuses is logged with the meaning of its error code and maps to
        None. Never pass a setting owned by another component (see the module docstring).
        """
        if not specs:
            return {}
        definitions = [self._definition(spec) for spec in specs]
        try:
            reply = await self._call("/", "AddSettings", "aa{sv}", [definitions],
                                     SETTINGS_INTERFACE)
        except CallFailed as exc:
            if exc.error_name == _UNKNOWN_METHOD:
                log.info("%s has no AddSettings (old localsettings); adding settings one by one",
                         self.service)
                return await self._add_one_by_one(specs)
            raise SettingsUnavailable(
                f"{self.service} refused AddSettings ({exc.error_name}: {exc.text}); "
                "check that it is Victron's localsettings") from None
        entries = reply.body[0] if reply.signature == "aa{sv}" else None
        if entries is None or len(entries) != len(specs):
            raise SettingsUnavailable(
                f"{self.service} answered AddSettings with {reply.signature!r} "
                f"({len(entries) if entries is not None else 0} items for {len(specs)}); "
                "check that it is Victron's localsettings")
        result: dict[str, Any] = {}
        for spec, entry in zip(specs, entries, strict=True):
            code = unwrap(entry.get("error"))
            if code != 0:
                log.error("localsettings refused %s: error %s (%s)", spec.path, code, _meaning(code))
                result[spec.path] = None
            else:
                result[spec.path] = unwrap(entry.get("value"))
        return result

    @staticmethod
    def _definition(spec: SettingSpec) -> dict[str, Variant]:
        definition = {"path": Variant("s", spec.path), "default": spec.typed(spec.default)}
        if spec.type_letter != "s" and (spec.min or spec.max):
            definition["min"] = spec.typed(spec.min)
            definition["max"] = spec.typed(spec.max)
        if spec.silent:
            definition["silent"] = Variant("i", 1)
        return definition

    async def _add_one_by_one(self, specs: Sequence[SettingSpec]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for spec in specs:
            letter = spec.type_letter
            bounds = ([Variant("s", ""), Variant("s", "")] if letter == "s"
                      else [spec.typed(spec.min), spec.typed(spec.max)])
            member = "AddSilentSetting" if spec.silent else "AddSetting"
            body = ["", spec.path[len("/Settings/"):], spec.typed(spec.default), letter, *bounds]
            try:
                reply = await self._call("/Settings", member, "ssvsvv", body, SETTINGS_INTERFACE)
            except CallFailed as exc:
                log.error("localsettings refused %s: %s: %s", spec.path, exc.error_name, exc.text)
                result[spec.path] = None
                continue
            code = reply.body[0] if reply.signature == "i" else None
            if code != 0:
                log.error("localsettings refused %s: error %s (%s)", spec.path, code,
                          _meaning(code))
                result[spec.path] = None
                continue
            result[spec.path] = await self.get(spec.path)
        return result

    async def claim_device_instance(self, unique_id: str, device_class: str = "battery",
                                    preferred: int = 100, *,
                                    instances: range = range(0, 2**31)) -> int:
        """Claim `<device_class>:<n>`; return n as localsettings granted it (it may bump it).
        Raise UnusableDeviceInstance when the stored value is not `<device_class>:<n>` with n
        in `instances` (the default: what fits the int32 of /DeviceInstance)."""
        for part in (unique_id, device_class):
            if not _PATH_ELEMENT.match(part):
                raise ValueError(f"{part!r} is not usable in a settings path (letters, digits, _)")
        path = f"/Settings/Devices/{unique_id}/ClassAndVrmInstance"
        value = (await self.add_settings([SettingSpec(path, f"{device_class}:{preferred}")]))[path]
        claimed_class, _, instance = value.partition(":") if isinstance(value, str) else ("", "", "")
        # Digits only, and few of them: int() of thousands of digits raises, and of "²" too.
        number = int(instance) if _INSTANCE_NUMBER.match(instance) else None
        if claimed_class != device_class or number is None or number not in instances:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise UnusableDeviceInstance(
                f"{path} holds {shown}, expected '{device_class}:<number>' with the number in "
                f"{instances.start}..{instances.stop - 1}: "
                f"set it to '{device_class}:{preferred}' in the GUI or with SetValue")
        return number

    # ----- reading and writing -----------------------------------------------------------------

    async def get(self, path: str) -> Any:
        """The current value, or None when the setting does not exist (logged once per path)."""
        try:
            reply = await self._call(path, "GetValue")
        except CallFailed as exc:
            self._missing(path, exc.error_name)
            return None
        if reply.signature != "v":
            self._missing(path, reply.signature)
            return None
        return unwrap(reply.body[0])

    def _missing(self, path: str, why: str | None) -> None:
        if path not in self._missing_logged:
            self._missing_logged.add(path)
            log.info("%s has no setting %s (%s)", self.service, path, why)

    async def set(self, path: str, value: Any) -> int:
        """SetValue; return its code (0 ok, -1 refused by localsettings or on a D-Bus error)."""
        try:
            reply = await self._call(path, "SetValue", "v", [wrap(value)])
        except CallFailed as exc:
            log.warning("SetValue %s = %r failed: %s %s", path, value, exc.error_name, exc.text)
            return -1
        if reply.signature != "i":
            log.warning("SetValue %s = %r failed:  %s", path, value, _text(reply))
            return -1
        return int(reply.body[0])

    async def watch(self, paths: Collection[str], callback: Callable[[str, Any], None]) -> None:
        """Call `callback(path, value)` whenever localsettings reports a new value of a path."""
        if not self._handler_added:
            self._handler_added = True
            self.bus.add_message_handler(self._on_message)
            await self._add_match(
                f"type='signal',sender='{DBUS}',path='{DBUS_PATH}',interface='{DBUS}',"
                f"member='NameOwnerChanged',arg0='{self.service}'")
            changes_before = self._owner_changes
            try:
                reply = await self._bus_daemon("GetNameOwner", "s", [self.service])
            except CallFailed:
                pass  # not on the bus yet: NameOwnerChanged will name its owner
            else:
                if changes_before == self._owner_changes:
                    self._owner = reply.body[0]
        unique = list(dict.fromkeys(paths))
        new = [p for p in unique if p not in self._watched]
        for path in unique:
            self._watched.setdefault(path, []).append(callback)
        await asyncio.gather(*(self._add_match(
            f"type='signal',sender='{self.service}',path='{p}',interface='{BUSITEM}',"
            "member='PropertiesChanged'") for p in new))

    async def close(self) -> None:
        if self._handler_added:
            self.bus.remove_message_handler(self._on_message)
            self._handler_added = False
        if self.bus.connected:
            for rule in self._rules:
                self.bus.send(Message(destination=DBUS, path=DBUS_PATH, interface=DBUS,
                                      member="RemoveMatch", signature="s", body=[rule],
                                      flags=MessageFlag.NO_REPLY_EXPECTED))
        self._rules.clear()
        self._watched.clear()

    # ----- internals ---------------------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return None
        path = msg.path
        if msg.member == "PropertiesChanged" and msg.interface == BUSITEM and path is not None:
            callbacks = self._watched.get(path)
            if callbacks and msg.sender == self._owner and msg.signature == "a{sv}":
                variant = msg.body[0].get("Value")
                if variant is None:
                    return None
                value = unwrap(variant)
                # Localsettings re-sends the value when only a default/min/max changed.
                if path in self._last and self._last[path] == value:
                    return None
                self._last[path] = value
                for callback in callbacks:
                    try:
                        callback(path, value)
                    except Exception:
                        log.exception("settings watch callback for %s failed", path)
        elif (msg.member == "NameOwnerChanged" and msg.sender == DBUS and msg.signature == "sss"
              and msg.body[0] == self.service):
            self._owner_changes += 1
            self._owner = msg.body[2] or None
        return None

    async def _add_match(self, rule: str) -> None:
        try:
            await self._bus_daemon("AddMatch", "s", [rule])
        except CallFailed as exc:
            raise SettingsUnavailable(
                f"the D-Bus daemon refused a match rule ({exc.error_name}: {exc.text})") from None
        self._rules.append(rule)

    async def _bus_daemon(self, member: str, signature: str, body: list[Any]) -> Message:
        return await self._send(dbus_message(member, signature, body), f"the D-Bus daemon ({member})")

    async def _call(self, path: str, member: str, signature: str = "",
                    body: list[Any] | None = None, interface: str = BUSITEM) -> Message:
        """The reply; CallFailed for an error reply of a localsettings that is on the bus."""
        try:
            return await self._send(Message(destination=self.service, path=path,
                                             interface=interface, member=member,
                                             signature=signature, body=body or []),
                                    f"{self.service} ({member} on {path})")
        except CallFailed as exc:
            if exc.error_name in _UNREACHABLE:
                raise SettingsUnavailable(
                    f"{self.service} is not on the bus ({exc.error_name}): localsettings is not "
                    "running, or aggbatt is connected to the wrong bus; start localsettings "
                    "(svc -u /service/localsettings) and restart aggbatt") from None
            raise

    async def _send(self, msg: Message, what: str) -> Message:
        """The reply; CallFailed for an error reply, SettingsUnavailable when none came."""
        try:
            return await call(self.bus, msg, self.timeout)
        except CallFailed as exc:
            if exc.timed_out:
                raise SettingsUnavailable(
                    f"no answer from {what} within {self.timeout:g} s: localsettings is hung or "
                    "overloaded; check 'svstat /service/localsettings' and the system load, "
                    "then restart aggbatt") from None
            if exc.error_name is None:
                raise SettingsUnavailable(
                    f"cannot reach {what}: {exc.cause or 'no reply'}; check the D-Bus "
                    "connection") from None
            raise


def _text(reply: Message) -> str:
    return str(reply.body[0]) if reply.body else ""
