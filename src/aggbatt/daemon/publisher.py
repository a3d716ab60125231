"""What goes on the aggregate service and how.

At start the fixed paths of a Venus device (management, identity) are added; after every tick the
engine's values and the bank's decisions for the GX page (aggbatt.core.pages) are set, paths the
engine produces for the first time are added with their unit and format (aggbatt.daemon.paths),
and one ItemsChanged goes out. A value the wire cannot carry makes only its own path invalid.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

from aggbatt import __version__
from aggbatt.bus.service import BusItemService
from aggbatt.core.engine import TickResult
from aggbatt.core.pages import info_values
from aggbatt.daemon.endpoint import charge_status, current_status
from aggbatt.daemon.paths import PRODUCT_ID, add_spec_path

if TYPE_CHECKING:
    from aggbatt.daemon.main import Daemon


def add_device_paths(svc: BusItemService, service: Any, instance: int) -> None:
    """The paths every Venus device publishes; `service`: the config's [service] table."""
    for path, value in {
        "/Mgmt/ProcessName": "aggbatt",
        "/Mgmt/ProcessVersion": __version__,
        "/Mgmt/Connection": "Virtual (aggbatt)",
        "/DeviceInstance": instance,
        "/ProductId": PRODUCT_ID,
        "/ProductName": service.product_name,
        "/FirmwareVersion": __version__,
        "/HardwareVersion": None,
        "/Connected": 1,
        "/Serial": service.unique_id,
    }.items():
        add_spec_path(svc, path, value)


def page_values(daemon: Daemon) -> dict[str, Any]:
    """The bank's decisions for the GX page, from what `status` reports."""
    charge = charge_status(daemon) or {}
    next_balancing = getattr(daemon.engine.strategies.charge, "next_balancing", None)
    due = (next_balancing(date.fromtimestamp(daemon.wall_clock()))
           if charge and callable(next_balancing) else None)
    return info_values(current_source=current_status(daemon).get("source"),
                       soc_strategy=daemon.config.soc.strategy,
                       charge_strategy=daemon.config.charge.strategy,
                       balancing=charge.get("balancing"), next_due=due,
                       feedin_guard=charge.get("feedin_guard"))


def publish(svc: BusItemService, result: TickResult, extra: dict[str, Any],
            log_once: Callable[[BaseException], None]) -> None:
    for path, value in {**result.values, **extra}.items():
        if path in svc:
            try:
                svc[path] = value
            except TypeError:
                log_once(TypeError(f"engine produced {value!r} for {path}"))
                svc[path] = None
        else:
            add_spec_path(svc, path, value)
    svc.publish()
