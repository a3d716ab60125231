"""events.py: the tick's reports are immutable values that carry their own log level and line."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from aggbatt.core import events
from aggbatt.core.events import (
    Event,
    KnownPacksForgotten,
    LimitSourceChanged,
    PackOnline,
    StrategyNote,
    TickFailed,
)


def test_every_event_class_is_frozen_and_has_its_own_line() -> None:
    classes = [getattr(events, name) for name in events.__all__]
    concrete = [c for c in classes if c is not Event]
    assert all(issubclass(c, Event) for c in concrete)
    for cls in concrete:
        assert cls.message is not Event.message, cls       # no event falls back to the base
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
        assert "__dict__" not in dir(cls), cls              # slots: many per tick stay small


def test_an_event_cannot_be_changed_after_the_tick_returned_it() -> None:
    event = PackOnline("Pack A", "com.victronenergy.battery.ttyUSB0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.pack = "Pack B"  # type: ignore[misc]
    assert event == PackOnline("Pack A", "com.victronenergy.battery.ttyUSB0")
    assert len({event, PackOnline("Pack A", "com.victronenergy.battery.ttyUSB0")}) == 1


def test_log_levels_and_lines() -> None:
    assert TickFailed("KeyError", 0.0).level == logging.INFO
    assert str(LimitSourceChanged("CVL", "Pack A lowers its CVL")) == \
        "CVL now set by: Pack A lowers its CVL"
    assert str(LimitSourceChanged("discharge", "no pack online")) == \
        "discharge limit now set by: no pack online"
    ids = tuple(f"OLD{n}" for n in range(7))
    assert str(KnownPacksForgotten(64, ids)) == \
        "more than 64 known packs: forgot 7 missing the longest (OLD0, OLD1, OLD2, OLD3, OLD4, ...)"
    assert str(PackOnline("C")) == "C: online"
    note = StrategyNote("own SoC waiting: no pack online yet", logging.WARNING)
    assert note.level == logging.WARNING and str(note) == "own SoC waiting: no pack online yet"
    assert StrategyNote("x").level == logging.INFO
