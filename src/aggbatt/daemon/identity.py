"""The aggregate's identity in localsettings: its DeviceInstance and its /CustomName.

The DeviceInstance is claimed like every Venus driver does (ClassAndVrmInstance); a localsettings
that is absent or refuses leaves the one from the config, so the aggregate is published anyway.
/CustomName is writeable by any client on the bus, so what is taken is bounded text and at most one
localsettings write is in flight: a flood (or a hung localsettings) costs neither memory nor log
lines, and the latest name is the one saved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aggbatt.bus.settings import (
    SettingsClient,
    SettingSpec,
    SettingsUnavailable,
    UnusableDeviceInstance,
)
from aggbatt.config import DEVICE_INSTANCE_RANGE

log = logging.getLogger("aggbatt")

# Ample for any name a person gives a bank; the bound keeps any client on the bus from storing
# megabytes in localsettings.
CUSTOM_NAME_MAX = 64


def custom_name_key(unique_id: str) -> str:
    return f"/Settings/Devices/{unique_id}/CustomName"


async def claim_identity(settings: SettingsClient, service: Any) -> tuple[int, str]:
    """(DeviceInstance, /CustomName) for the `service` table of the config."""
    try:
        low, high = DEVICE_INSTANCE_RANGE
        try:
            instance = await settings.claim_device_instance(
                service.unique_id, "battery", service.device_instance,
                instances=range(low, high + 1))
        except UnusableDeviceInstance as exc:
            log.warning("%s; publishing DeviceInstance %d from the config", exc,
                        service.device_instance)
            instance = service.device_instance
        key = custom_name_key(service.unique_id)
        stored = await settings.add_settings([SettingSpec(key, "")])
        name = stored.get(key)
        if not isinstance(name, str):
            name = ""
        if len(name) > CUSTOM_NAME_MAX:
            log.warning("the stored /CustomName has %d characters: publishing its first %d",
                        len(name), CUSTOM_NAME_MAX)
            name = name[:CUSTOM_NAME_MAX]
        return instance, name
    except SettingsUnavailable as exc:
        log.warning("%s; publishing with DeviceInstance %d from the config, a new "
                    "/CustomName is kept in memory only", exc, service.device_instance)
        return service.device_instance, ""


class CustomNameWriter:
    """The on_change handler of /CustomName and the one task that saves it."""

    def __init__(self, settings: SettingsClient | None, unique_id: str,
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.key = custom_name_key(unique_id)
        self.clock = clock
        self._to_save: str | None = None  # the latest /CustomName not yet sent to settings
        self._writer: asyncio.Task[None] | None = None
        self._save_failed = False
        self._refused = 0
        self._refused_logged_at: float | None = None

    def changed(self, path: str, value: Any) -> bool:
        if not isinstance(value, str) or len(value) > CUSTOM_NAME_MAX:
            self._refused += 1
            now = self.clock()
            if self._refused_logged_at is None or now - self._refused_logged_at >= 60:
                self._refused_logged_at = now
                more = (f" ({self._refused - 1} more since the last report)"
                        if self._refused > 1 else "")
                log.warning("%s: refused a write that is not text of at most %d characters%s",
                            path, CUSTOM_NAME_MAX, more)
                self._refused = 0
            return False
        if self.settings is not None:
            self._to_save = value
            if self._writer is None or self._writer.done():
                self._writer = asyncio.get_running_loop().create_task(self._save())
        return True

    async def _save(self) -> None:
        assert self.settings is not None
        key = self.key
        while self._to_save is not None:
            value, self._to_save = self._to_save, None
            try:
                code = await self.settings.set(key, value)
                problem = None if code == 0 else f"localsettings refused it (code {code})"
            except SettingsUnavailable as exc:
                problem = str(exc)
            if problem is None:
                if self._save_failed:
                    log.info("localsettings answers again: saved /CustomName %r to %s", value,
                             key)
                self._save_failed = False
            elif not self._save_failed:
                self._save_failed = True
                log.warning("could not save /CustomName %r to %s: %s; it is published anyway, "
                            "and the next name is saved once localsettings answers", value, key,
                            problem)

    def cancel(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
