"""The contract between metagen and its plugins.

Plugin authors import from here only: ``hookimpl`` to mark hook implementations, the data types
strategies and scorers exchange, and the protocols components satisfy. Nothing here imports
torch, transformers or an HTTP client.
"""

import pluggy

from .protocols import Generator, Host, PairwiseUtility, Scorer, StepScorer, Strategy
from .types import Budget, BudgetExceeded, Candidate, Result

PROJECT_NAME = "metagen"
"""The pluggy project name; also the entry-point group plugins register under."""

ENTRY_POINT_GROUP = "metagen"

KINDS = ("logits_processors", "stopping_criteria", "scorers", "strategies")
"""The four kinds of component, in the order their hooks are called."""

HOSTS = ("transformers", "vllm", "tgi")
"""The hosts metagen-plugins itself registers (through ``register_hosts``). The installed hosts
are those every plugin registers: ``metagen plugins list`` shows them."""

HOOKS = tuple(f"register_{kind}" for kind in KINDS) + ("register_hosts",)
"""Every hook a plugin may implement."""

CONTEXT_PARAMETERS = ("model", "tokenizer", "generator", "registry")
"""Factory parameters metagen fills in; a configuration may not set them. ``model``,
``tokenizer`` and ``generator`` come from the host; ``registry`` (the installed components, to
build a nested one, as the built-in ``compose`` strategy does) from metagen's core."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = [
    "Budget",
    "BudgetExceeded",
    "CONTEXT_PARAMETERS",
    "Candidate",
    "ENTRY_POINT_GROUP",
    "Generator",
    "HOOKS",
    "Host",
    "HOSTS",
    "KINDS",
    "PROJECT_NAME",
    "PairwiseUtility",
    "Result",
    "Scorer",
    "StepScorer",
    "Strategy",
    "hookimpl",
    "hookspec",
]
