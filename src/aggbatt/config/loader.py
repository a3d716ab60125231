"""Reading a configuration: the file within its bounds, the TOML, the defaults merged under it.

The loader deep-merges the user's document over the packaged ``data/default.toml`` (tables merge key
by key, any other value replaces the default) and validates the merged document. A file that is
not a config (a device, a FIFO, megabytes, tables nested hundreds deep) is refused with a
``ConfigError`` before it can cost memory, time or the stack of whoever reads it.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import stat
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from aggbatt.config.errors import ConfigError, ConfigIssue, issues_of
from aggbatt.config.schema import Config

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# A real config is a few kB with tables two levels deep; anything far beyond is not a config and
# must not cost memory, time or the stack of whoever reads it (check-config, start, SIGHUP).
MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NESTING = 16

# The shipped defaults live in the package's data/ folder, one level above this package.
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                            "default.toml")
DEFAULT_SOURCE = "default.toml"


@functools.lru_cache(maxsize=1)
def default_toml_text() -> str:
    """The commented default configuration, e.g. to create a user's config.toml from it."""
    # A plain path rather than importlib.resources (0.5 MB more RSS): aggbatt is always installed
    # as files, by pip or by the release bundle.
    with open(DEFAULT_PATH, encoding="utf-8") as handle:
        return handle.read()


@functools.lru_cache(maxsize=1)
def _default_document() -> dict[str, Any]:
    return _parse_toml(default_toml_text(), DEFAULT_SOURCE)


def default_config() -> Config:
    return _validate({}, DEFAULT_SOURCE, "")


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Load a user file over the defaults; None means the defaults alone."""
    if path is None:
        return default_config()
    source = os.fsdecode(path)
    raw = _read_bounded(source)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue("", None, "the file is not UTF-8 text", line)], source) from None
    return parse_config(text, source)


def _read_bounded(source: str) -> bytes:
    """The file's bytes; a device, FIFO or directory is refused without reading from it (a FIFO
    opened non-blocking cannot hang us), and so is a file above MAX_CONFIG_BYTES."""
    def refuse(why: str) -> ConfigError:
        return ConfigError([ConfigIssue("", source, why)], source)

    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refuse("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise refuse(f"cannot read the file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_CONFIG_BYTES:
        raise refuse(f"the file is larger than {MAX_CONFIG_BYTES:,} bytes; a config is a few kB")
    return raw


def parse_config(text: str, source: str = "<string>") -> Config:
    return _validate(_parse_toml(text, source), source, text)


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed document (e.g. {"freshness": {"stale_after": 0.3}}) over the defaults."""
    return _validate(data, source, "")


_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    def refuse(message: str, line: int | None = None) -> ConfigError:
        return ConfigError([ConfigIssue("", None, message, line)], source)

    if len(text) > MAX_CONFIG_BYTES:
        raise refuse(f"the text is larger than {MAX_CONFIG_BYTES:,} characters; a config is a few kB")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _SYNTAX_POSITION.search(message)
        line: int | None = getattr(exc, "lineno", None)
        if position:
            message = f"{message[: position.start()]} (column {position.group(2)})"
            line = int(position.group(1))
        raise refuse(f"TOML syntax error: {message}", line) from None
    except RecursionError:
        raise refuse(f"arrays or tables nested too deeply (at most {MAX_CONFIG_NESTING} levels)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise refuse(f"TOML value not readable: {str(exc).split(';')[0]}") from None
    if _depth(document) > MAX_CONFIG_NESTING:
        raise refuse(f"arrays or tables nested too deeply (at most {MAX_CONFIG_NESTING} levels)")
    return document


def _depth(document: Any) -> int:
    """How deeply lists and tables nest, without recursion (the parser accepts a few hundred)."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        node, level = pending.pop()
        deepest = max(deepest, level)
        if level > MAX_CONFIG_NESTING:
            break
        children = node.values() if isinstance(node, Mapping) else node
        pending.extend((child, level + 1) for child in children
                       if isinstance(child, (Mapping, list)))
    return deepest


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


def _validate(user: Mapping[str, Any], source: str, text: str) -> Config:
    merged = _merge(copy.deepcopy(_default_document()), user)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(issues_of(exc, Config, user, text), source) from None

