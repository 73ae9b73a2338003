"""A fixture plugin that keeps the ``register`` callbacks it is given, to check their signatures
against docs/hooks.md (tests/hooks/test_hooks_contract.py)."""

from metagen_hooks import hookimpl

seen = {}


@hookimpl
def register_hosts(register):
    seen['register_hosts'] = register


@hookimpl
def register_commands(register):
    seen['register_commands'] = register


@hookimpl
def register_scorers(register):
    seen['components'] = register
