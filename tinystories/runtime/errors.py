"""The error every stage raises for a bad setting: one line that names the key, the value and its source."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and where it came from."""
