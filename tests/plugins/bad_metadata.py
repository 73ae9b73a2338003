"""A fixture plugin registering with unknown metadata, ``tgl=`` (tests/test_registry.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_scorers(register):
    register("x", object, tgl=lambda: {})
