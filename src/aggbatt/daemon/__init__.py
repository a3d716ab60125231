"""The daemon layer: wires the bus to the core and owns the state files, reload and selection."""

from aggbatt.daemon.main import Daemon, run

__all__ = ["Daemon", "run"]
