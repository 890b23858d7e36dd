"""The errors every stage raises: a bad setting (one line that names the key, the value and its source), and
work that failed (a command exits 1 for it, 2 for bad input)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; the message names the key, the value and where it came from."""


class WorkFailed(RuntimeError):
    """The work of a command failed (damage found, requests that failed, runs not finished): exit status 1, as
    opposed to bad input (2); the message says what failed and what to do."""
