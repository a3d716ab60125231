"""Changing a running daemon's configuration: the SIGHUP reload and the log level.

Rules of a reload (SIGHUP re-reads the file the daemon was started with):

- An invalid file changes nothing: every error is logged (key, value, why, what is allowed) and
  the running configuration stays, as it was.
- What the daemon is made of is fixed at start: its identity on the bus, its subscriptions, the
  pack directory, the choice of strategies, the tick timer and the watchdog (RESTART_ONLY). A
  change of such a key is logged with "takes effect at the next restart" and the running value is
  kept, so the running configuration is always one that passed validation.
- Every other key applies at once: the engine reads its configuration every tick (freshness,
  aggregation, safety, expected packs), and a strategy whose parameters changed (REBUILDS) is
  rebuilt from the new configuration with its state carried over.
- The engine object stays, so the online/offline tracking of every pack (states, readmission
  timers, known ids) is untouched by a reload.

What a reload keeps and resets, per rebuilt strategy:
- soc (coulomb counter): the counted charge and the capacity it refers to are kept; the hold
  timers of the full/empty resets start again.
- charge (own): the balancing record (last balancing date, phase and since when) is kept; the
  dynamic-CVL controller, the DCL cut-off latch (re-judged from the cells at the next tick) and
  the absorption hold (passthrough) start again.
- current (victron_devices): the shunt and charger freshness timers start again.

Daemon-level keys apply at once too: service.product_name (/ProductName), service.debounce,
service.select_as_battery (the aggregate is selected, or the selection it made given back, right
away) and logging.level.

Log level: the `aggbatt` logger's level, set from [logging] level at start and at a reload where
it changed, and by a write to /LogLevel on the aggregate at run time.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggbatt.config import Config, ConfigError, config_from_dict, load_config
from aggbatt.core.strategies import Strategies, build_strategies
from aggbatt.daemon.store import StateStore

if TYPE_CHECKING:
    from aggbatt.daemon.main import Daemon

log = logging.getLogger("aggbatt")

LOG_LEVELS = ("debug", "info", "warning", "error")
ROOT_LOGGER = "aggbatt"

_SUBSCRIPTIONS = "the bus subscriptions are made at start"
_DIRECTORY = "pack identities come from the pack directory built at start"
_STRATEGY = "a strategy's state files and helpers are set up at start"
RESTART_ONLY: dict[str, str] = {
    "service.name": "the bus name is claimed at start",
    "service.unique_id": "the DeviceInstance and /CustomName settings are claimed at start",
    "service.device_instance": "the DeviceInstance is claimed at start",
    "service.tick_interval": "the tick timer and the SoC counter's gap limit are set at start",
    "safety.watchdog_timeout": "the watchdog starts with the daemon",
    "discovery.include": _DIRECTORY,
    "discovery.exclude": _DIRECTORY,
    "discovery.product_name_contains": _DIRECTORY,
    "discovery.cell_voltages": _SUBSCRIPTIONS,
    "discovery.history": _SUBSCRIPTIONS,
    "current.source": _SUBSCRIPTIONS,
    "current.include_dcdc": _SUBSCRIPTIONS,
    "soc.strategy": _STRATEGY,
    "charge.strategy": _STRATEGY,
    "feedin.guard": "the feed-in guard is set up at start",
}

# Which strategy is built from which keys (the factories in strategies/__init__.py).
REBUILDS: dict[str, tuple[str, ...]] = {
    "current": ("current.", "freshness.idle_current"),
    "soc": ("soc.",),
    "charge": ("charge.", "feedin.", "freshness.idle_current"),
}
REBUILT = {
    "current": "rebuilt the current source (its shunt and charger timers start again)",
    "soc": "rebuilt the SoC strategy (the counted charge is kept)",
    "charge": "rebuilt the charge strategy (the balancing record is kept; the dynamic CVL, the "
              "DCL cut-off latch and the absorption hold start again)",
}


@dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what runs after the reload: the new file with RESTART_ONLY keys kept
    applied: tuple[Change, ...]
    deferred: tuple[Change, ...]
    rebuild: frozenset[str]  # names of the strategies to rebuild (keys of REBUILDS)

    def lines(self, source: str) -> list[tuple[int, str]]:
        """(log level, text) lines that say what the reload does."""
        if not self.applied and not self.deferred:
            return [(logging.INFO, f"config reloaded from {source}: nothing changed")]
        out = [(logging.INFO, f"config reloaded from {source}: {len(self.applied)} change(s) "
                              "applied now")]
        out += [(logging.INFO, f"config reload: {change}") for change in self.applied]
        out += [(logging.WARNING, f"config reload: {change} takes effect at the next restart "
                                  f"({RESTART_ONLY[change.key]})") for change in self.deferred]
        out += [(logging.INFO, f"config reload: {REBUILT[name]}") for name in sorted(self.rebuild)]
        return out


def flatten(config: Config) -> dict[str, Any]:
    """Dotted key -> value of every leaf (lists are leaves)."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(config.model_dump(), "")
    return flat


def read_config(path: str) -> Config | None:
    """The file as a valid Config, or None after logging every error."""
    try:
        return load_config(path)
    except ConfigError as exc:
        if len(exc.errors) == 1:
            only = exc.errors[0].describe(exc.source).replace("\n    ", ": ")
            log.error("config reload: %s; keeping the running configuration", only)
            return None
        for issue in exc.errors:
            log.error("config reload: %s", issue.describe(exc.source).replace("\n    ", ": "))
        log.error("config reload: %d error(s) in %s; keeping the running configuration",
                  len(exc.errors), exc.source)
        return None


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """What a reload from `old` to `new` applies, defers and rebuilds. Raises ConfigError when
    the new file combined with the kept restart-only values is not a valid configuration."""
    before, after = flatten(old), flatten(new)
    changes = [Change(k, before.get(k), after[k]) for k in after if before.get(k) != after[k]]
    applied = tuple(c for c in changes if c.key not in RESTART_ONLY)
    deferred = tuple(c for c in changes if c.key in RESTART_ONLY)
    config = new
    if deferred:
        document = new.model_dump()
        for change in deferred:
            table, _, leaf = change.key.rpartition(".")
            node = document
            for part in table.split("."):
                node = node[part]
            node[leaf] = change.old
        config = config_from_dict(document, "the reloaded config with the restart-only keys kept")
    rebuild = frozenset(name for name, keys in REBUILDS.items()
                        if any(c.key == k or (k.endswith(".") and c.key.startswith(k))
                               for c in applied for k in keys))
    return ReloadPlan(config, applied, deferred, rebuild)


def rebuild_strategies(strategies: Strategies, config: Config, parts: Collection[str],
                       store: StateStore) -> Strategies:
    """`strategies` with the named ones built anew from `config`, their state carried over."""
    if not parts:
        return strategies
    fresh = build_strategies(config)
    current = carry_state(strategies.current, fresh.current, store) if "current" in parts \
        else strategies.current
    soc = carry_state(strategies.soc, fresh.soc, store) if "soc" in parts else strategies.soc
    charge = carry_state(strategies.charge, fresh.charge, store) if "charge" in parts \
        else strategies.charge
    return Strategies(current, soc, charge)


def carry_state(old: Any, new: Any, store: StateStore) -> Any:
    """`new` holding the state of the `old` one it replaces (strategies.Stateful); when `old`
    holds none yet, the saved state, as a restart would."""
    spec = getattr(new, "state_file", None)
    if spec is None:
        return new
    wall = store.wall_clock()
    kept = old.state_to_carry(wall) if getattr(old, "state_file", None) == spec else None
    if kept is not None:
        new.restore_state(kept, None, wall)
    else:
        store.restore([new])
    return new


def reload_daemon(daemon: Daemon) -> None:
    """SIGHUP: apply the config file again (the rules in the module header)."""
    if daemon.config_path is None:
        log.warning("SIGHUP: started without --config (built-in defaults), nothing to reload")
        return
    new = read_config(daemon.config_path)
    if new is None:
        return
    try:
        plan = plan_reload(daemon.config, new)
        strategies = rebuild_strategies(daemon.engine.strategies, plan.config, plan.rebuild,
                                        daemon.store)
    except (ConfigError, ValueError) as exc:
        log.error("config reload: %s; keeping the running configuration", exc)
        return
    for level, line in plan.lines(daemon.config_path):
        log.log(level, "%s", line)
    old, daemon.config = daemon.config, plan.config
    daemon.engine.reconfigure(plan.config, strategies)
    if daemon.feedin is not None:
        daemon.feedin.strategy = strategies.charge
    if daemon.service is None:
        return
    if plan.config.logging.level != old.logging.level:
        set_log_level(plan.config.logging.level)
        daemon.service["/LogLevel"] = plan.config.logging.level
    daemon.service["/ProductName"] = plan.config.service.product_name
    if plan.config.service.select_as_battery != old.service.select_as_battery:
        daemon.select_battery()
    daemon.tick()


def log_level_written(path: str, value: Any) -> bool:
    """The on_change handler of /LogLevel."""
    if value not in LOG_LEVELS:
        log.warning("%s = %r refused: use one of %s", path, value, ", ".join(LOG_LEVELS))
        return False
    set_log_level(value)
    log.warning("log level now %s (written to %s)", value, path)
    return True


def set_log_level(level: str) -> bool:
    """Set the level of every aggbatt logger; False (nothing changed) for an unknown name."""
    if level not in LOG_LEVELS:
        return False
    logging.getLogger(ROOT_LOGGER).setLevel(level.upper())
    return True
