"""Tests of the command line (metagen_plugins.cli, cli_run, plot, templates), run as a user runs it."""
