"""Tests of the contract, metagen_hooks (hooks/)."""
