"""Tests of the engines (metagen_plugins.engines), a folder for each engine."""
