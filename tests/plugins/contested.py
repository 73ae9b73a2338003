"""A fixture plugin registering the scorer ``contested``; installed under several names, they
conflict (tests/test_registry.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_scorers(register):
    register("contested", lambda: None)
