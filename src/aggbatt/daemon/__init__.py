"""The daemon layer: wires the bus to the core and owns the state files, reload and selection.

`Daemon` and `run` are imported on first use: `aggbatt status` imports the endpoint's schema
(aggbatt.daemon.status_api) and must not pay for the engine and the bus plumbing behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aggbatt.daemon.main import Daemon, run

__all__ = ["Daemon", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aggbatt.daemon import main

        return getattr(main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
