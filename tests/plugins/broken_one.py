"""A fixture plugin that fails to import (tests/cli/test_cli.py)."""

raise ImportError('needs a missing lib')
