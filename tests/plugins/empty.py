"""A fixture plugin that implements no hook (tests/test_plugins.py)."""

from metagen_hooks import hookimpl  # noqa: F401
