"""Errors the harness reports as one line before any run is created.

A module of its own, importing nothing, so that every layer (tracking, validation, data
loading) can raise them without importing the learning rules (``methods/``).
"""


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


class NoCompletedTrial(RuntimeError):
    """A tuning study ended with no ``COMPLETE`` trial: every trial failed (or diverged)."""
