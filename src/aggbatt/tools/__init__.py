"""Commands beside the daemon: status, migrate, simulate and demo (see aggbatt.cli)."""
