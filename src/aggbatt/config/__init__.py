"""The TOML configuration: models (`schema`), reading and merging (`loader`), the error report
(`errors`).

pydantic stays at this boundary; the rest of aggbatt reads the frozen ``Config``.
"""

from aggbatt.config.errors import ConfigError, ConfigIssue
from aggbatt.config.loader import (
    config_from_dict,
    default_config,
    default_toml_text,
    load_config,
    parse_config,
)
from aggbatt.config.schema import DEVICE_INSTANCE_RANGE, Config

__all__ = [
    "DEVICE_INSTANCE_RANGE", "Config", "ConfigError", "ConfigIssue", "config_from_dict",
    "default_config", "default_toml_text", "load_config", "parse_config",
]
