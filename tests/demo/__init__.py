"""Tests of the demo arithmetic task and its shipped models (metagen_plugins.demo)."""
