"""`aggbatt status`: what the running daemon and Venus make of the bank, for people and scripts.

The daemon answers `GetStatus` (interface io.github.aggbatt.Status, any path) on the aggregate's
own connection with one JSON object (aggbatt.daemon.status_api.StatusReport). This module asks
for it, asks com.victronenergy.system which battery monitor and BMS Venus really uses
(victron-contract §4.3, §4.4, 5.5), adds warnings, and prints text or JSON.

Rules:
- Only dbus-fast and the standard library are imported: a status check on a GX device must not
  pay for pydantic or the engine.
- Every call is bounded by a timeout; the daemon missing, hung or not aggbatt is a StatusError
  whose message says what to do (the command exits 1).
- The printer is robust: any key may be missing or hold garbage, and keys it does not know
  (added by newer daemon versions) are printed as they are.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from dbus_fast import Message
from dbus_fast.aio import MessageBus

from aggbatt.bus.busitem import BUSITEM, NO_OWNER, CallFailed, call
from aggbatt.bus.connection import BusUnavailable, open_bus
from aggbatt.bus.values import unwrap
from aggbatt.daemon.status_api import ACCESS_DENIED, FORGET_REFUSED, REPORT_KEYS, STATUS_INTERFACE
from aggbatt.errors import AggbattError

DEFAULT_SERVICE = "com.victronenergy.battery.aggregate"
SYSTEM_SERVICE = "com.victronenergy.system"
CALL_TIMEOUT = 3.0

_SYSTEM_PATHS = ("/ActiveBatteryService", "/ActiveBmsService", "/ActiveBmsInstance",
                 "/Dvcc/Alarms/MultipleBatteries")
MULTIPLE_BATTERIES = "Dvcc/Alarms/MultipleBatteries"
# Keys the text printer lays out itself; any other key is printed generically.
_KNOWN = (REPORT_KEYS - {"own_charge"}) | {"system", "warnings", "notes"}

FIX_SELECTION = (
    "to fix: run 'aggbatt-ctl enable' (or 'aggbatt select-battery on'), or set "
    "service.select_as_battery = true in config.toml and restart aggbatt, or choose it on the GX "
    "device: Settings > System setup > Battery monitor, and Settings > DVCC > Controlling BMS")


class StatusError(AggbattError, RuntimeError):
    """No status could be read; the message says why and what to do."""


# ----- reading ------------------------------------------------------------------------------

async def _call(bus: MessageBus, msg: Message, timeout: float, what: str) -> Message:
    """The reply; StatusError when none came in time, CallFailed for an error reply."""
    try:
        return await call(bus, msg, timeout)
    except CallFailed as exc:
        if exc.timed_out:
            raise StatusError(f"{what} did not answer within {timeout:g} s") from None
        raise


async def _ask_daemon(bus: MessageBus, service: str, member: str, timeout: float) -> Message:
    try:
        return await _call(bus, Message(destination=service, path="/", interface=STATUS_INTERFACE,
                                        member=member), timeout, service)
    except StatusError as exc:
        raise StatusError(f"{exc}: aggbatt is hung or the system is overloaded; see its log "
                          "(aggbatt-ctl logs)") from None
    except CallFailed as exc:
        if exc.error_name is None:
            raise
        if exc.error_name in NO_OWNER:
            raise StatusError(f"aggbatt is not running: {service} is not on the bus. Start it "
                              "with 'aggbatt-ctl start' and see 'aggbatt-ctl logs' if it stops"
                              ) from None
        if exc.error_name in (ACCESS_DENIED, FORGET_REFUSED) and exc.text:
            raise StatusError(exc.text) from None
        raise StatusError(f"{service} does not answer {member} ({exc.error_name}): it is not "
                          "aggbatt, or an aggbatt too old for this command") from None


async def _daemon_status(bus: MessageBus, service: str, timeout: float) -> dict[str, Any]:
    reply = await _ask_daemon(bus, service, "GetStatus", timeout)
    try:
        data = json.loads(reply.body[0])
    except (ValueError, TypeError, IndexError):
        data = None
    if not isinstance(data, dict):
        raise StatusError(f"{service} answered GetStatus with something that is not a JSON object")
    return data


async def _system_choice(bus: MessageBus, timeout: float) -> dict[str, Any]:
    """What com.victronenergy.system uses; {"present": False} when it is not on the bus."""
    async def value(path: str) -> Any:
        try:
            reply = await _call(bus, Message(destination=SYSTEM_SERVICE, path=path,
                                             interface=BUSITEM, member="GetValue"),
                                timeout, SYSTEM_SERVICE)
        except CallFailed as exc:
            if exc.error_name is None:
                raise
            if exc.error_name in NO_OWNER:
                raise LookupError from None
            return None
        return unwrap(reply.body[0])

    try:
        values = await asyncio.gather(*(value(p) for p in _SYSTEM_PATHS))
    except LookupError:
        return {"present": False}
    except StatusError as exc:
        return {"present": True, "error": str(exc)}
    return {"present": True, **{p.lstrip("/"): v for p, v in zip(_SYSTEM_PATHS, values, strict=True)}}


async def gather(address: str | None, service: str = DEFAULT_SERVICE,
                 timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
    """The daemon's status plus "system" (Venus' choice) and "warnings"."""
    try:
        bus = await open_bus(address, timeout)
    except BusUnavailable as exc:
        raise StatusError(str(exc)) from None
    try:
        status = await _daemon_status(bus, service, timeout)
        system = await _system_choice(bus, timeout)
    finally:
        bus.disconnect()
    status["system"] = system
    status["warnings"] = warnings(status, system)
    status["notes"] = notes(status, system)
    return status


# ----- judging ------------------------------------------------------------------------------

def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _table_of(report: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    table = report.get(key)
    return table if isinstance(table, Mapping) else {}


def _aggregate(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return _table_of(status, "aggregate")


def _service(status: Mapping[str, Any]) -> str:
    service = status.get("service")
    return service if isinstance(service, str) else DEFAULT_SERVICE


def selection_warnings(service: str, instance: Any, system: Mapping[str, Any]) -> list[str]:
    """Why Venus does not use the aggregate as battery monitor or BMS (empty when it does)."""
    if not system.get("present"):
        return [f"{SYSTEM_SERVICE} is not on this bus, so it is unknown whether Venus uses the "
                "aggregate (normal on a PC; on a GX device dbus-systemcalc-py is not running)"]
    if "error" in system:
        return [f"cannot read which battery Venus uses: {system['error']}"]
    found = []
    ours = f"com.victronenergy.battery/{instance}"
    battery = system.get("ActiveBatteryService")
    if battery != ours:
        found.append(f"Venus uses {battery or 'no battery monitor'} as its battery monitor "
                     f"(/ActiveBatteryService), not the aggregate ({ours})")
    bms = system.get("ActiveBmsService")
    if bms != service:
        found.append(f"DVCC is controlled by {bms or 'no BMS'} (/ActiveBmsService), not the "
                     f"aggregate ({service}): the packs' own limits apply, not the bank's")
    if found:
        found.append(FIX_SELECTION)
    return found


def warnings(status: Mapping[str, Any], system: Mapping[str, Any]) -> list[str]:
    agg = _aggregate(status)
    service = _service(status)
    found = selection_warnings(service, agg.get("/DeviceInstance"), system)
    packs = [p for p in _list(status.get("packs")) if isinstance(p, Mapping)]
    offline = [p for p in packs if not p.get("online")]
    if offline:
        names = ", ".join(f"{p.get('name', p.get('id', '?'))} ({p.get('reason') or p.get('state')})"
                          + (f" still counting {p.get('holds')}" if p.get("holds") else "")
                          for p in offline)
        found.append(f"{len(offline)} of {len(packs)} pack(s) not online: {names}")
    silent = _unanswered(status)
    if silent:
        found.append(f"{len(silent)} service(s) on the bus not answering, retried: "
                     + ", ".join(_plain(u.get("name")) for u in silent))
    failure = agg.get("/Alarms/InternalFailure")
    if isinstance(failure, (int, float)) and failure:
        found.append("internal failure: aggbatt publishes fail-safe limits; see its log")
    return found


def notes(status: Mapping[str, Any], system: Mapping[str, Any]) -> list[str]:
    """Things Venus shows that look wrong but are expected with aggbatt."""
    service = _service(status)
    if system.get(MULTIPLE_BATTERIES) == 1 and system.get("ActiveBmsService") == service:
        return ["Venus reports /Dvcc/Alarms/MultipleBatteries = 1 (a 'multiple BMS' notification): "
                "expected with aggbatt. The packs publish a charge voltage limit as well as the "
                "aggregate, and Venus counts every battery that does; DVCC follows only the "
                "selected BMS, which is the aggregate, so the notification can be acknowledged"]
    return []


# ----- printing -----------------------------------------------------------------------------

def _num(value: Any, decimals: int, unit: str = "", sign: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "--"
    text = f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"
    return f"{text} {unit}" if unit else text


def _age(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "--"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def _plain(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) or "-"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unanswered(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [u for u in _list(report.get("not_answering")) if isinstance(u, Mapping)]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_text(report: Mapping[str, Any]) -> str:
    agg = _aggregate(report)
    config = _table_of(report, "config")
    lines = [
        f"aggbatt {report.get('version', '?')}: {report.get('service', '?')} "
        f"(DeviceInstance {agg.get('/DeviceInstance', '?')}), {report.get('ticks', '?')} ticks, "
        f"log level {agg.get('/LogLevel', '?')}",
        "",
        "Aggregate:",
        f"  {_num(agg.get('/Dc/0/Voltage'), 2, 'V')}"
        f"   {_num(agg.get('/Dc/0/Current'), 1, 'A', True)}"
        f"   {_num(agg.get('/Dc/0/Power'), 0, 'W')}   SoC {_num(agg.get('/Soc'), 1, '%')}"
        f"   packs online {agg.get('/System/NrOfModulesOnline', '?')},"
        f" offline {agg.get('/System/NrOfModulesOffline', '?')}",
        f"  CVL {_num(agg.get('/Info/MaxChargeVoltage'), 2, 'V')}"
        f"   CCL {_num(agg.get('/Info/MaxChargeCurrent'), 1, 'A')}"
        f"   DCL {_num(agg.get('/Info/MaxDischargeCurrent'), 1, 'A')}"
        f"   allow charge {agg.get('/Io/AllowToCharge', '?')}, discharge"
        f" {agg.get('/Io/AllowToDischarge', '?')}",
        f"  charge limit:    {_plain(agg.get('/Info/ChargeLimitation'))}",
        f"  discharge limit: {_plain(agg.get('/Info/DischargeLimitation'))}",
    ]
    if agg.get("/Info/ChargeMode") is not None:
        lines.append(f"  CVL rule:        {_plain(agg.get('/Info/ChargeMode'))}")
    current = report.get("current_source", config.get("current"))
    lines += [
        f"  current source:  {_plain(current)}",
        f"  SoC strategy:    {_plain(config.get('soc'))}",
        f"  charge strategy: {_plain(config.get('charge'))}",
    ]
    for key, value in report.items():
        if key not in _KNOWN:
            lines.append(f"  {key}: {_plain(value)}")
    alarms = [f"{p.rsplit('/', 1)[-1]}={v}" for p, v in agg.items()
              if str(p).startswith("/Alarms/") and isinstance(v, (int, float)) and v]
    if alarms:
        lines.append(f"  alarms: {', '.join(alarms)}")
    lines += ["", "Packs:"]
    packs = [p for p in _list(report.get("packs")) if isinstance(p, Mapping)]
    if packs:
        rows = [["NAME", "STATE", "AGE", "V", "A", "SOC", "CVL", "CCL", "DCL", "SERVICE / REASON"]]
        for p in packs:
            why = p.get("reason")
            holds = p.get("holds")
            rows.append([
                _plain(p.get("name", p.get("id"))), _plain(p.get("state")), _age(p.get("age")),
                _num(p.get("voltage"), 2), _num(p.get("current"), 1, sign=True),
                _num(p.get("soc"), 1), _num(p.get("cvl"), 2), _num(p.get("ccl"), 1),
                _num(p.get("dcl"), 1),
                _plain(p.get("service")) + (f"  ({why})" if why and not p.get("online") else "")
                + (f"  [its last fresh data still counts: {_plain(holds)}]" if holds else ""),
            ])
        lines += _table(rows)
    else:
        lines.append("  none found")
    for u in _unanswered(report):
        lines.append(f"  not answering: {_plain(u.get('name'))} for {_age(u.get('age'))},"
                     f" {_plain(u.get('attempts'))} attempt(s), retrying ({_plain(u.get('error'))})")
    lines += ["", "Battery selection:"]
    system = _table_of(report, "system")
    if system.get("present"):
        lines += [f"  Venus battery monitor: {_plain(system.get('ActiveBatteryService'))}",
                  f"  Venus BMS for DVCC:    {_plain(system.get('ActiveBmsService'))}"]
    else:
        lines.append("  Venus: com.victronenergy.system not found")
    selection = report.get("selection")
    if isinstance(selection, Mapping):
        lines.append(f"  service.select_as_battery = {_plain(selection.get('select_as_battery'))}"
                     + (f"; saved to restore: {_plain(selection.get('previous'))}"
                        if selection.get("previous") else ""))
    remarks = _list(report.get("notes"))
    if remarks:
        lines += ["", "Notes:"] + [f"  - {n}" for n in remarks]
    found = _list(report.get("warnings"))
    if found:
        lines += ["", "Warnings:"] + [f"  ! {w}" for w in found]
    return "\n".join(lines)


def render_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)


async def main(address: str | None, service: str, as_json: bool, out: TextIO,
               err: TextIO, timeout: float = CALL_TIMEOUT) -> int:
    """`aggbatt status`: 0 with the status printed, 1 when there is none (message on `err`)."""
    try:
        report = await gather(address, service, timeout)
    except StatusError as exc:
        print(f"aggbatt status: {exc}", file=err)
        return 1
    print(render_json(report) if as_json else render_text(report), file=out)
    return 0


async def forget_missing(address: str | None, service: str, out: TextIO, err: TextIO,
                         timeout: float = CALL_TIMEOUT) -> int:
    """`aggbatt forget-packs`: the daemon forgets known packs that are not on the bus now."""
    try:
        bus = await open_bus(address, timeout)
    except BusUnavailable as exc:
        print(f"aggbatt forget-packs: {exc}", file=err)
        return 1
    try:
        reply = await _ask_daemon(bus, service, "ForgetMissingPacks", timeout)
    except StatusError as exc:
        print(f"aggbatt forget-packs: {exc}", file=err)
        return 1
    finally:
        bus.disconnect()
    forgotten = reply.body[0] if reply.body else []
    if forgotten:
        print("forgot: " + ", ".join(forgotten), file=out)
    else:
        print("every known pack is on the bus: nothing to forget", file=out)
    return 0
