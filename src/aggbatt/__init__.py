"""aggbatt: one virtual Victron battery built from many parallel packs."""

__version__ = "0.1.0"
