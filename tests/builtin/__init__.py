"""Tests of the built-in plugin (metagen_plugins.builtin): processors, stopping criteria, scorers, strategies."""
