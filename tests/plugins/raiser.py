"""A fixture plugin whose hook raises (tests/test_registry.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_strategies(register):
    raise KeyError("no config here")
