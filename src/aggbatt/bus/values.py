"""Victron BusItem value encoding on the wire.

Rules (docs/victron-contract.md §1.3): an invalid value is an empty array (`ai`); readers accept any
empty array as invalid. Publishers never send `b`: booleans go out as int 0/1. Ints that do not
fit int32 go out as `x`. Numbers arriving as `i`, `x`, `u`, `y` or `d` are all numbers to a reader.
"""

from __future__ import annotations

import math
from typing import Any

from dbus_fast import Variant

INVALID = Variant("ai", [])
_INT32_MIN = -(2**31)
_INT32_MAX = 2**31 - 1


def wrap(value: Any) -> Variant:
    """Encode a Python value the way a Victron publisher does."""
    if value is None:
        return INVALID
    if isinstance(value, Variant):
        return value
    if isinstance(value, bool):
        return Variant("i", int(value))
    if isinstance(value, int):
        return Variant("i" if _INT32_MIN <= value <= _INT32_MAX else "x", value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return INVALID
        return Variant("d", value)
    if isinstance(value, str):
        return Variant("s", value)
    if isinstance(value, dict):
        return Variant("a{sv}", {str(k): wrap(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        if not value:
            return INVALID
        return Variant("av", [wrap(v) for v in value])
    raise TypeError(f"cannot publish a value of type {type(value).__name__}")


def unwrap(value: Any) -> Any:
    """Decode a received value; any empty array is invalid (None)."""
    while isinstance(value, Variant):
        value = value.value
    if isinstance(value, (list, bytes)) and len(value) == 0:
        return None
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return value


def as_number(value: Any) -> float | None:
    """A received value as a finite float, or None for anything that is not a usable number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return None
    return number
