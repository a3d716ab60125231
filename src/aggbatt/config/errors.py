"""The error report: every bad key with its value, why it is wrong and what is allowed.

Every error is collected before anything is reported: one ``ConfigError`` lists them all. pydantic's
errors are translated here into ``ConfigIssue``s that speak TOML (key paths, TOML values and types),
name the closest valid key for a typo, and give the line of the key in the checked file.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from aggbatt.errors import AggbattError


def fmt(number: float) -> str:
    return f"{number:g}"


def rule(why: str, allowed: str, *, key: str | None = None, value: object = None) -> PydanticCustomError:
    """An error of a rule across keys; `key` names a sub-key when the rule sits on a whole table."""
    ctx: dict[str, Any] = {"why": why, "allowed": allowed}
    if key is not None:
        ctx["key"] = key
        ctx["value"] = value
    return PydanticCustomError("config_rule", "{why}", ctx)


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: `key` is the dotted path ("" for file-level problems), `message` says why and
    what is allowed, `line` is the line in the checked file when known."""

    key: str
    value: object
    message: str
    line: int | None = None

    def describe(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        if not self.key:
            return f"{where}: {self.message}"
        return f"{where}: {self.key} = {show(self.value)}\n    {self.message}"


class ConfigError(AggbattError):
    """The configuration is unusable; `errors` holds every issue, str() is the full report."""

    def __init__(self, errors: Sequence[ConfigIssue], source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.errors)
        lines = [f"{self.source}: {count} configuration error{'' if count == 1 else 's'}"]
        lines += ["  " + issue.describe(self.source).replace("\n", "\n  ") for issue in self.errors]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# --- turning pydantic errors into ConfigIssues ---------------------------------------------------

_TYPE_ERRORS = {"int_from_float", "float_parsing", "int_parsing", "bool_parsing"}


def _is_type_error(error_type: str) -> bool:
    return error_type.endswith("_type") or error_type in _TYPE_ERRORS


def issues_of(exc: ValidationError, root: type[BaseModel], user: Mapping[str, Any],
              text: str) -> list[ConfigIssue]:
    """The issues of validating `user` (merged over the defaults) as `root`; `text` is the checked
    file's text, for line numbers ("" when there is none)."""
    lines = _key_lines(text)
    # A union (current.shunts) reports one error per member for the same value; keep the most
    # telling one: a range error says more than "wrong type".
    found: dict[str, tuple[bool, ConfigIssue]] = {}
    for error in exc.errors():
        typed = _is_type_error(error["type"])
        issue = _issue(error, root, user, lines)
        previous = found.get(issue.key)
        if previous is None or (previous[0] and not typed):
            found[issue.key] = (typed, issue)
    return [issue for _, issue in found.values()]


def _issue(error: Mapping[str, Any], root: type[BaseModel], user: Mapping[str, Any],
           lines: Mapping[str, int]) -> ConfigIssue:
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    loc = tuple(error["loc"])
    value = error.get("input")
    if kind == "config_rule" and "key" in ctx:
        loc += (ctx["key"],)
        value = ctx["value"]
    elif kind == "missing":
        value = None
    path, names, field, table = _resolve(loc, root)
    if kind == "config_rule":
        why, allowed = ctx["why"], ctx["allowed"]
    elif kind == "extra_forbidden":
        why = "unknown key"
        suggestion = _suggest(names, table, root)
        if suggestion:
            why += f" (did you mean {suggestion}?)"
        section = ".".join(names[:-1])
        keys = ", ".join(table.model_fields)
        allowed = f"the keys of [{section}]: {keys}" if section else f"the tables {keys}"
    else:
        why = _why(kind, ctx, value, error["msg"])
        allowed = _allowed(field)
    message = f"{why}; allowed: {allowed}" if allowed else why
    if kind not in ("extra_forbidden", "missing") and not _is_set(user, names):
        message += " (not set in this file: the value is the default)"
    return ConfigIssue(path, value, message, lines.get(".".join(names)))


def _resolve(loc: tuple[str | int, ...], root: type[BaseModel],
             ) -> tuple[str, list[str], FieldInfo | None, type[BaseModel]]:
    """Dotted path with [index] parts, the key names alone, the field and the table holding it."""
    model: type[BaseModel] | None = root
    table: type[BaseModel] = root
    field: FieldInfo | None = None
    names: list[str] = []
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif model is not None:  # below a leaf, str parts are union member tags
            table = model
            field = model.model_fields.get(part)
            names.append(part)
            path = f"{path}.{part}" if path else part
            model = _table_model(field)
    return path, names, field, table


def _table_model(field: FieldInfo | None) -> type[BaseModel] | None:
    annotation = field.annotation if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _why(kind: str, ctx: Mapping[str, Any], value: object, fallback: str) -> str:
    bounds = {
        "greater_than_equal": ("must be at least", "ge"),
        "greater_than": ("must be greater than", "gt"),
        "less_than_equal": ("must be at most", "le"),
        "less_than": ("must be less than", "lt"),
    }
    if kind in bounds:
        words, name = bounds[kind]
        return f"{words} {fmt(ctx[name])}"
    if kind == "missing":
        return "is missing (default.toml lacks it too)"
    if kind == "finite_number":
        return "must be a finite number, not nan or inf"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return "has the wrong form"
    if kind == "literal_error":
        return "is not one of the choices"
    if _is_type_error(kind):
        return f"has the wrong type ({_toml_type(value)})"
    return fallback


def _allowed(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    if field.description:
        return field.description
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(show(choice) for choice in get_args(annotation))
    if annotation is bool:
        return "true or false"
    model = _table_model(field)
    if model is not None:
        return "a table with the keys " + ", ".join(model.model_fields)
    return ""


def _normalise(key: str) -> str:
    return key.strip().lower().replace("-", "_")


@functools.lru_cache(maxsize=1)
def _all_paths(root: type[BaseModel]) -> tuple[str, ...]:
    paths: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            paths.append(prefix + name)
            sub = _table_model(field)
            if sub is not None:
                walk(sub, f"{prefix}{name}.")

    walk(root, "")
    return tuple(paths)


def _suggest(names: list[str], table: type[BaseModel], root: type[BaseModel]) -> str | None:
    """The valid key the user most likely meant: same table first, then the same name elsewhere."""
    prefix = ".".join(names[:-1] + [""]) if len(names) > 1 else ""
    wanted = _normalise(names[-1])
    here = list(table.model_fields)
    if wanted in here:
        return prefix + wanted
    elsewhere = [path for path in _all_paths(root) if path.rsplit(".", 1)[-1] == wanted]
    if elsewhere:
        return elsewhere[0]
    close = difflib.get_close_matches(wanted, here, n=1, cutoff=0.6)
    if close:
        return prefix + close[0]
    started = [key for key in here if key.startswith(wanted)]
    if started:
        return prefix + started[0]
    leaves = {path.rsplit(".", 1)[-1]: path for path in reversed(_all_paths(root))}
    close = difflib.get_close_matches(wanted, list(leaves), n=1, cutoff=0.8)
    return leaves[close[0]] if close else None


def _is_set(document: Mapping[str, Any], names: list[str]) -> bool:
    node: object = document
    for name in names:
        if not isinstance(node, Mapping) or name not in node:
            return False
        node = node[name]
    return True


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, (datetime, date, time)):
        return "a date/time"
    return type(value).__name__


def _toml(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, BaseModel):
        return _toml(value.model_dump())
    if isinstance(value, Mapping):
        items = ", ".join(f"{key} = {_toml(item)}" for key, item in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


def show(value: object, limit: int = 100) -> str:
    text = _toml(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- where keys are in the user's text (best effort, for line numbers in the report) ------------

_HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_ASSIGNMENT = re.compile(r"""^\s*([A-Za-z0-9_\-."' ]+?)\s*=""")


def _split_key(dotted: str) -> list[str]:
    return [part.strip().strip("\"'") for part in dotted.split(".")]


def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            _record(lines, table, number)
            continue
        assignment = _ASSIGNMENT.match(line)
        if assignment:
            _record(lines, table + _split_key(assignment.group(1)), number)
    return lines


def _record(lines: dict[str, int], names: list[str], number: int) -> None:
    """The first line that mentions a key or any of its parent tables."""
    for end in range(1, len(names) + 1):
        lines.setdefault(".".join(names[:end]), number)

