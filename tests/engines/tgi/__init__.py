"""Tests of the TGI engine (metagen_plugins.engines.tgi), against a stand-in of its server."""
