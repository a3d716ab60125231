"""The benchmark: what the daemon costs at bank scale, against the cost of receiving its input.

`python -m aggbatt.bench` (scripts/bench) runs it; see bankrun.py for the sequence of one run.
"""
