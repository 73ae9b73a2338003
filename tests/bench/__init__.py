"""Tests of bench/'s own rules and helpers (bench/ is scripts, not a package: its tests put it on sys.path)."""
