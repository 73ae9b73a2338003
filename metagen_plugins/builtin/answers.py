"""Moved to :mod:`metagen_hooks.answers` (the kit for strategy authors); kept so imports work."""

from metagen_hooks.answers import DEFAULT_PATTERN, extract  # noqa: F401
