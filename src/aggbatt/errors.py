"""The one base class of aggbatt's own errors.

Every error aggbatt raises on purpose derives from AggbattError, so a caller can tell "aggbatt
refused or could not do it, and the message says why" from a defect. Each subclass keeps the
builtin base callers already catch it as (ConnectionError, ValueError, RuntimeError).
It imports nothing, so every layer, the pure core included, may use it.
"""

from __future__ import annotations


class AggbattError(Exception):
    """An expected failure whose message tells the user what happened and what to do."""
