"""A fixture plugin that implements no hook (tests/test_isolation.py)."""

from metagen_hooks import hookimpl  # noqa: F401
