"""Moved to :mod:`metagen_hooks.selection` (the kit for strategy authors); kept so imports work."""

from metagen_hooks.selection import argmax, majority, mbr, vote_settled  # noqa: F401
