"""Moved to :mod:`metagen_hooks.run` (the kit for strategy authors); kept so imports work."""

from metagen_hooks.run import Run, aggregate_steps  # noqa: F401
