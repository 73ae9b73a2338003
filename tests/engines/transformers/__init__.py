"""Tests of the in-process engine (metagen_plugins.engines.transformers)."""
