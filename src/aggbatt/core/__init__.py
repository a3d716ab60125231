"""The pure core: pack model, pack directory, aggregation, strategies and the engine tick.

Nothing here does I/O or reads the clock: readings, settings and the time come in as arguments and
limits and state go out as values, so every decision can be replayed in a test. The import rules
are checked by tests/test_layers.py.
"""
