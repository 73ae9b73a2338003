"""A fixture plugin that raises when imported (tests/test_plugins.py)."""

raise RuntimeError('boom at import')
