"""A fixture plugin registering one name twice (tests/test_registry.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_scorers(register):
    register("same", lambda: 1)
    register("same", lambda: 2)
