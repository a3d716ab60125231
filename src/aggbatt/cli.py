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
from typing import Any, Callable, Optional, Sequence

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


_COMMANDS: tuple[Callable[[Any], None], ...] = (_add_check_config,)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
