"""Versioned JSON state files that survive a crash or a power cut at any moment.

A write goes to a temp file in the same directory, is fsynced, renamed over the old file and the
directory is fsynced: after a kill -9 or power loss the file is either the old or the new version,
never a mix. A reader gets None (and the reason) for a missing, truncated, garbage or
wrong-version file so the caller can fall back to its best source and say so in the log.

Reading never raises and never blocks: the daemon reads its state files before it publishes
anything, so an exception there would end the process at every start and the supervisor would
restart it forever. Only regular files are read (a FIFO or a device in the state dir would block
the start or never end), at most MAX_BYTES of them, and what JSON allows but we never write is
refused as corrupt: nesting deeper than MAX_DEPTH (the parser and every later repr recurse) and
integers longer than MAX_INT_DIGITS (Python refuses to convert very long ones, and a float
conversion of a long one overflows).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("aggbatt.persist")

MAX_BYTES = 1 << 20  # our largest state file is a few hundred bytes
MAX_DEPTH = 16
MAX_INT_DIGITS = 20  # an int64 and its sign
IGNORED = "ignored; aggbatt starts without it and replaces it at its next save"


@dataclass(frozen=True)
class StateRead:
    data: dict[str, Any] | None
    problem: str | None  # why data is None; None when the file was fine
    absent: bool = False  # there is no such file: a first start, nothing to warn about


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: str | os.PathLike[str], version: int) -> StateRead:
    target = Path(path)
    try:
        raw = _read_regular(target)
    except FileNotFoundError:
        return StateRead(None, f"{target} does not exist", absent=True)
    except OSError as exc:
        return StateRead(None, f"{target} cannot be read ({exc.strerror or exc}): {IGNORED}")
    if isinstance(raw, str):
        return StateRead(None, f"{target} {raw}: {IGNORED}")
    try:
        data = json.loads(raw.decode("utf-8"), parse_int=_bounded_int)
    except (ValueError, RecursionError):  # bad UTF-8 and bad JSON are ValueErrors too
        return StateRead(None, f"{target} is not valid JSON (truncated or corrupt): {IGNORED}")
    if _depth(data) > MAX_DEPTH:
        return StateRead(None, f"{target} nests deeper than {MAX_DEPTH} levels: {IGNORED}")
    if not isinstance(data, dict):
        return StateRead(None, f"{target} does not hold a JSON object: {IGNORED}")
    if data.get("version") != version:
        return StateRead(None, f"{target} has version {data.get('version')!r}, expected "
                               f"{version}: {IGNORED}")
    return StateRead(data, None)


def _read_regular(target: Path) -> bytes | str:
    """The file's bytes, or why it is not read (not a regular file, too large)."""
    fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "is not a regular file"
        if info.st_size > MAX_BYTES:
            return f"is larger than {MAX_BYTES} bytes"
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:
            return f"is larger than {MAX_BYTES} bytes"
        return b"".join(chunks)
    finally:
        os.close(fd)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits")
    return int(text)


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (the value may be deeper than the stack)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(data, 1)]
    while todo:
        value, level = todo.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                return level
            todo.extend((item, level + 1) for item in value)
    return deepest
