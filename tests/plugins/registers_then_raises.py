"""A fixture plugin whose hook registers a scorer, then raises (tests/test_registry.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_scorers(register):
    register("half_done", lambda: None)
    raise RuntimeError("midway")
