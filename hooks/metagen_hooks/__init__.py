"""The contract between metagen and its plugins.

Plugin authors import from here only: ``hookimpl`` to mark hook implementations, the data types
strategies and scorers exchange, and the protocols components satisfy. Nothing here imports
torch, transformers or an HTTP client.
"""

import pluggy

from .protocols import Generator, PairwiseUtility, Scorer, StepScorer, Strategy
from .types import Budget, BudgetExceeded, Candidate, Result

PROJECT_NAME = "metagen"
"""The pluggy project name; also the entry-point group plugins register under."""

ENTRY_POINT_GROUP = "metagen"

KINDS = ("logits_processors", "stopping_criteria", "scorers", "strategies")
"""The four kinds of component, in the order their hooks are called."""

HOSTS = ("transformers", "vllm", "tgi")
"""Where a component can run. A factory registered with no host metadata runs in-process."""

CONTEXT_PARAMETERS = ("model", "tokenizer", "generator")
"""Factory parameters the host fills in; a configuration may not set them."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = [
    "Budget",
    "BudgetExceeded",
    "CONTEXT_PARAMETERS",
    "Candidate",
    "ENTRY_POINT_GROUP",
    "Generator",
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
