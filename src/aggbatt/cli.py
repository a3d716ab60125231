"""Command line entry point: ``aggbatt <command> ...``.

Each sub-command is one ``_add_<name>(subparsers)`` function that declares its arguments and sets
``handler`` to a small function. Handlers import their implementation lazily: pydantic and
dbus-fast cost several MB of RSS on a GX device, so starting a command imports only what that
command uses. To add a command, write its ``_add_<name>`` and handler and list it in ``_COMMANDS``.

Exit codes: 0 success, 2 invalid usage or invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aggbatt import __version__

EXIT_OK = 0
EXIT_INVALID = 2


def _add_check_config(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-config",
        help="validate a config file and list every error",
        description="Validate FILE over the defaults and list every error at once: the key, its "
        "value, why it is wrong and what is allowed. Exit code 0 when valid, 2 when not.",
    )
    parser.add_argument("file", metavar="FILE", help="TOML config file")
    parser.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    from aggbatt.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    print(
        f"{args.file}: config OK (soc {config.soc.strategy}, charge {config.charge.strategy}, "
        f"current {config.current.source})"
    )
    return EXIT_OK


def _load_or_report(path: str | None) -> Any:
    """The config, or None after printing every error (the caller exits 2)."""
    from aggbatt.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )


def _bus_address(choice: str) -> str | None:
    """--bus value -> address (None = the system bus)."""
    import os

    if choice == "system":
        return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    if choice == "session":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise SystemExit("--bus session: DBUS_SESSION_BUS_ADDRESS is not set")
        return address
    return choice


def _add_bus(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bus", default="system", metavar="system|session|ADDRESS",
                        help="D-Bus to use (default: system, as on a GX device)")


def _add_run(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the daemon: publish the aggregate battery",
        description="Follow every pack on the bus and publish com.victronenergy.battery.aggregate. "
        "Without --config the defaults apply (plain pass-through bank).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    parser.add_argument("--state-dir", metavar="DIR", default="state",
                        help="where state files are kept (default: ./state)")
    _add_bus(parser)
    parser.set_defaults(handler=_run)


def _pause_before_failing() -> None:
    """Under supervise (service/run sets AGGBATT_ERROR_PAUSE) an error that cannot heal by itself
    would restart us every second and fill the 100 kB flash log with the same lines."""
    import os
    import time

    try:
        pause = float(os.environ.get("AGGBATT_ERROR_PAUSE", "0"))
    except ValueError:
        pause = 0.0
    if pause > 0:
        print(f"aggbatt: waiting {pause:g} s before exiting", file=sys.stderr, flush=True)
        time.sleep(pause)


def _run(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        _pause_before_failing()
        return EXIT_INVALID
    _setup_logging(config.logging.level)
    import asyncio
    import logging
    from pathlib import Path

    from aggbatt.bus.service import ServiceNameTaken
    from aggbatt.daemon import run

    log = logging.getLogger("aggbatt")
    log.info("aggbatt %s starting: config %s, state %s, bus %s", __version__,
             args.config or "defaults", args.state_dir, args.bus)
    try:
        return asyncio.run(run(config, _bus_address(args.bus), Path(args.state_dir),
                               config_path=args.config))
    except ServiceNameTaken as exc:
        log.error("%s", exc)
        return 1
    except (ConnectionError, OSError) as exc:
        log.error("cannot connect to the %s bus: %s", args.bus, exc)
        return 1


def _capacities(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("capacities are Ah numbers separated by commas") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("capacities must be positive Ah numbers")
    return values


def _add_demo(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulated packs, the real daemon and a live table on a private bus",
        description="Start a private D-Bus, simulated serialbattery packs and the daemon, and show "
        "a live table. Keys: 1-9 select a pack, f freeze, v vanish/return, b block charging, "
        "l link loss, q quit.",
    )
    parser.add_argument("--packs", type=int, default=3, help="number of packs (default 3)")
    parser.add_argument("--cells", type=int, default=16, help="cells per pack (default 16)")
    parser.add_argument("--capacities", type=_capacities, default=[],
                        help="Ah per pack, comma separated (overrides --packs), e.g. 280,280,200")
    parser.add_argument("--config", metavar="FILE", help="TOML config for the daemon")
    parser.add_argument("--scenario", metavar="FILE", help="timed faults, e.g. scenarios/pack-failure.toml")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    if not 1 <= args.packs <= 16 or not 4 <= args.cells <= 32:
        print("--packs must be 1..16 and --cells 4..32", file=sys.stderr)
        return EXIT_INVALID
    _setup_logging("warning")
    import asyncio

    from aggbatt.tools.demo import DemoOptions, run_demo

    options = DemoOptions(packs=args.packs, cells=args.cells, capacities=args.capacities,
                          scenario=args.scenario, duration=args.duration,
                          interactive=sys.stdin.isatty())
    try:
        return asyncio.run(run_demo(config, options))
    except KeyboardInterrupt:
        return 0


def _add_migrate_ini(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "migrate-ini",
        help="convert a dbus-aggregate-batteries config.ini (and its state files)",
        description="Convert CONFIG_INI of dbus-aggregate-batteries (over its built-in defaults) "
        "into an aggbatt TOML file and list every key that could not be mapped and why. With "
        "--state-dir, also convert storedvalue_charge and storedvalue_last_balancing found next "
        "to CONFIG_INI (or in --reference-dir).",
    )
    parser.add_argument("ini", metavar="CONFIG_INI", help="the reference's config.ini")
    parser.add_argument("--out", metavar="CONFIG_TOML", required=True, help="TOML file to write")
    parser.add_argument("--state-dir", metavar="DIR", help="aggbatt state directory to fill")
    parser.add_argument("--reference-dir", metavar="DIR",
                        help="where the storedvalue_* files are (default: beside CONFIG_INI)")
    parser.add_argument("--capacity", metavar="AH[,AH...]", type=_capacities,
                        help="the bank's installed capacity (or each pack's, separated by "
                        "commas): stored with the converted charge so the own SoC is right "
                        "from the first pack online; without it aggbatt waits for every pack")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out and existing state files")
    parser.set_defaults(handler=_migrate_ini)


def _migrate_ini(args: argparse.Namespace) -> int:
    from pathlib import Path

    from aggbatt.tools.migrate import MigrationError, migrate, report

    try:
        result = migrate(Path(args.ini), Path(args.out),
                         state_dir=Path(args.state_dir) if args.state_dir else None,
                         reference_dir=Path(args.reference_dir) if args.reference_dir else None,
                         force=args.force,
                         capacity=sum(args.capacity) if args.capacity else None)
    except MigrationError as exc:
        print(f"migrate-ini: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(report(result))
    return EXIT_OK


def _date(text: str) -> Any:
    from datetime import date

    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a date is YYYY-MM-DD") from None


def _add_simulate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run the charge strategies over a simulated day, faster than real time",
        description="Run the configured strategies against a simulated bank (solar by day, loads, "
        "one cell 80 mV high) and write DIR/day.csv, the log lines to DIR/day.log and, with "
        "matplotlib (pip install 'aggbatt[plot]'), DIR/day.png: voltage, cell extremes, CVL, CCL, "
        "DCL and SoC.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    parser.add_argument("--profile", choices=("day",), default="day", help="what to simulate")
    parser.add_argument("--out", metavar="DIR", required=True, help="directory for the CSV and PNG")
    parser.add_argument("--packs", type=int, default=2, help="number of packs (default 2)")
    parser.add_argument("--cells", type=int, help="cells per pack (default 16 LFP, 24 LTO)")
    parser.add_argument("--capacity", type=float, default=280.0, help="Ah per pack (default 280)")
    parser.add_argument("--date", type=_date, help="the simulated day, YYYY-MM-DD (default today)")
    parser.add_argument("--last-balancing", type=_date, metavar="DATE",
                        help="date of the last balancing (default: never, so it is due)")
    parser.add_argument("--step", type=float, default=5.0, help="simulated seconds per tick (default 5)")
    parser.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    if not 1 <= args.packs <= 16 or not (args.cells is None or 4 <= args.cells <= 32) \
            or args.capacity <= 0 or not 0.5 <= args.step <= 10:
        print("--packs must be 1..16, --cells 4..32, --capacity > 0 and --step 0.5..10",
              file=sys.stderr)
        return EXIT_INVALID
    _setup_logging("warning")
    from pathlib import Path

    from aggbatt.tools.simulate import SimulateOptions, simulate

    options = SimulateOptions(out=Path(args.out), profile=args.profile, packs=args.packs,
                              cells=args.cells, capacity_ah=args.capacity, day=args.date,
                              last_balancing=args.last_balancing, step=args.step)
    result = simulate(config, options, source=args.config or "defaults")
    print(f"{result.rows} rows: {result.csv}\nevents: {result.log}")
    if result.png is not None:
        print(f"plot: {result.png}")
    else:
        print(result.note)
    return EXIT_OK


def _add_status(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="show what the running daemon and Venus make of the bank",
        description="Ask the running daemon for each pack and the aggregate (values, online or "
        "offline with reason and age, limits and the rule that set them, current source, SoC "
        "strategy, balancing, feed-in guard) and com.victronenergy.system for the battery and "
        "BMS it uses; warn when that is not the aggregate. Exit code 1 when aggbatt is not "
        "running.",
    )
    _add_bus(parser)
    parser.add_argument("--service", default="com.victronenergy.battery.aggregate", metavar="NAME",
                        help="the aggregate's bus name (service.name in the config)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per D-Bus call")
    parser.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    import asyncio

    from aggbatt.tools.status import main

    return asyncio.run(main(_bus_address(args.bus), args.service, args.json, sys.stdout,
                            sys.stderr, args.timeout))


def _add_forget_packs(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "forget-packs",
        help="forget known packs that are not on the bus (removed for good)",
        description="aggbatt remembers every pack it has seen, so one missing after a reboot "
        "counts offline and raises /Alarms/BmsCable. After removing a pack for good, run this "
        "once while the remaining packs are connected. Packs on the bus, even quiet ones, are "
        "never forgotten; while a battery service on the bus cannot be read nothing is. Only "
        "root and the user aggbatt runs as may ask.",
    )
    _add_bus(parser)
    parser.add_argument("--service", default="com.victronenergy.battery.aggregate", metavar="NAME",
                        help="the aggregate's bus name (service.name in the config)")
    parser.set_defaults(handler=_forget_packs)


def _forget_packs(args: argparse.Namespace) -> int:
    import asyncio

    from aggbatt.tools.status import forget_missing

    return asyncio.run(forget_missing(_bus_address(args.bus), args.service, sys.stdout, sys.stderr))


def _add_select_battery(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "select-battery",
        help="make the aggregate Venus' battery monitor and BMS (on), or give it back (off)",
        description="on: save the present /Settings/SystemSetup/BatteryService and BmsInstance in "
        "the state dir, then select the aggregate. off: restore the saved values where they still "
        "hold the aggregate (a choice made since in the GX menu is kept).",
    )
    parser.add_argument("mode", choices=("on", "off"))
    _add_bus(parser)
    parser.add_argument("--state-dir", metavar="DIR", default="state",
                        help="aggbatt's state directory (default: ./state)")
    parser.add_argument("--config", metavar="FILE",
                        help="the daemon's TOML config, for service.name and service.unique_id")
    parser.set_defaults(handler=_select_battery)


def _select_battery(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    import asyncio
    from pathlib import Path

    from aggbatt.bus.settings import SettingsUnavailable
    from aggbatt.daemon.selection import SelectionError, command

    try:
        lines = asyncio.run(command(_bus_address(args.bus), args.mode == "on",
                                    Path(args.state_dir), config.service.name,
                                    config.service.unique_id))
    except (SelectionError, SettingsUnavailable) as exc:
        print(f"select-battery: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    if args.mode == "off" and config.service.select_as_battery:
        print(f"note: service.select_as_battery is true in {args.config}: the daemon selects the "
              "aggregate again at its next start")
    return EXIT_OK


_COMMANDS: tuple[Callable[[Any], None], ...] = (_add_check_config, _add_run, _add_demo,
                                                 _add_migrate_ini, _add_simulate, _add_status,
                                                 _add_select_battery, _add_forget_packs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aggbatt",
        description="One virtual Victron battery from many parallel lithium packs.",
    )
    parser.add_argument("--version", action="version", version=f"aggbatt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
