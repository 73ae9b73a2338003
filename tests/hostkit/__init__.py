"""Tests of the host kit (metagen_plugins.hostkit), against stand-in servers."""
