"""A fixture plugin implementing a hook that does not exist, ``register_scorer``
(tests/test_plugins.py)."""

from metagen_hooks import hookimpl


@hookimpl
def register_scorer(register):
    register("x", object)
