"""Versioned JSON state files that survive a crash or a power cut at any moment.

A write goes to a temp file in the same directory, is fsynced, renamed over the old file and the
directory is fsynced: after a kill -9 or power loss the file is either the old or the new version,
never a mix. A reader gets None (and the reason) for a missing, truncated, garbage or
wrong-version file so the caller can fall back to its best source and say so in the log.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateRead:
    data: dict[str, Any] | None
    problem: str | None  # why data is None; None when the file was fine


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
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StateRead(None, f"{target} does not exist")
    except OSError as exc:
        return StateRead(None, f"{target} cannot be read: {exc.strerror}")
    except UnicodeDecodeError:
        return StateRead(None, f"{target} is not valid JSON (truncated or corrupt)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return StateRead(None, f"{target} is not valid JSON (truncated or corrupt)")
    if not isinstance(data, dict):
        return StateRead(None, f"{target} does not hold a JSON object")
    if data.get("version") != version:
        return StateRead(None, f"{target} has version {data.get('version')!r}, expected {version}")
    return StateRead(data, None)
