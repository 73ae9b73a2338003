"""The contract between metagen and its plugins.

Plugin authors import from here only: ``hookimpl`` to mark hook implementations, the data types
strategies and scorers exchange, the protocols components satisfy, and the kit for strategy
authors: :class:`Run` (sampling, scoring, budget and trace in one helper), samples watched and
cancelled as they decode (:mod:`metagen_hooks.inflight`: :class:`Watch`, :class:`InFlight`), the trace-event
schema :data:`EVENTS`, the selection rules ``majority``, ``argmax`` and ``mbr``
(:mod:`metagen_hooks.selection`; answers extracted by :mod:`metagen_hooks.answers`), the
step-search kit (:mod:`metagen_hooks.search`: :class:`StepSearch`, :class:`BeamSearch`,
:class:`TreeNode`, ``root``, ``softmax``, ``apportion``) and a model-free Generator for tests
(:mod:`metagen_hooks.testing`). A component
that runs inside a serving engine declares it with :mod:`metagen_hooks.engines`. Nothing here imports
torch, transformers or an HTTP client.
"""

import pluggy

from .protocols import Begins, Generator, Host, PairwiseUtility, Pooled, Scorer, StepScorer, Strategy
from .types import Budget, BudgetExceeded, Candidate, Result, ScorerNeeded
from .run import EVENTS, Run, check_event
from .inflight import InFlight, Watch
from .selection import argmax, majority, mbr
from .search import BeamSearch, StepSearch, TreeNode

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
    "BeamSearch",
    "Begins",
    "Budget",
    "EVENTS",
    "BudgetExceeded",
    "CONTEXT_PARAMETERS",
    "Candidate",
    "ENTRY_POINT_GROUP",
    "Generator",
    "HOOKS",
    "Host",
    "InFlight",
    "HOSTS",
    "KINDS",
    "PROJECT_NAME",
    "PairwiseUtility",
    "Pooled",
    "Result",
    "Run",
    "Scorer",
    "ScorerNeeded",
    "StepScorer",
    "StepSearch",
    "Strategy",
    "TreeNode",
    "Watch",
    "argmax",
    "check_event",
    "hookimpl",
    "hookspec",
    "majority",
    "mbr",
]
