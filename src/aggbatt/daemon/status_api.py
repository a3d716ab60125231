"""The status endpoint's interface, shared by the daemon that answers and `aggbatt status` that asks.

The daemon answers `GetStatus` (interface STATUS_INTERFACE, any path) on the aggregate's own
connection with one JSON object shaped like `StatusReport`, and `ForgetMissingPacks` with the ids
it forgot or one of the errors below. Only the standard library is imported here: `aggbatt status`
imports this module and must not pay for pydantic, the engine or the daemon. A reader must still
treat every key as optional: an older or newer daemon may answer.
"""

from __future__ import annotations

from typing import Any, TypedDict

STATUS_INTERFACE = "io.github.aggbatt.Status"
# The daemon's answers to a ForgetMissingPacks it does not carry out; the text says why.
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
FORGET_REFUSED = "io.github.aggbatt.Error.NothingForgotten"


class StrategyChoice(TypedDict):
    soc: str
    current: str
    charge: str


class SelectionReport(TypedDict):
    select_as_battery: bool
    saved_by: str | None
    previous: dict[str, Any]


class StatusReport(TypedDict, total=False):
    service: str
    version: str
    ticks: int
    aggregate: dict[str, Any]  # every published path -> its value
    packs: list[dict[str, Any]]  # engine.PackStatus of each known pack
    config: StrategyChoice
    current_source: dict[str, Any]  # the current source's own report ("source" at least)
    not_answering: list[dict[str, Any]]  # services whose scan fails (monitor.Unanswered)
    selection: SelectionReport
    own_charge: dict[str, Any]  # the charge strategy's report, when it gives one


# The keys the daemon fills in; `aggbatt status` adds the rest of what it prints.
REPORT_KEYS = frozenset(StatusReport.__annotations__)
