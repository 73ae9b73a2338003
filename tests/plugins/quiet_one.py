"""A fixture plugin with nothing in it (tests/cli/test_cli.py)."""
