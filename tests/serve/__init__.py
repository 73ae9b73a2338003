"""Tests of metagen serve (metagen_plugins.serve)."""
