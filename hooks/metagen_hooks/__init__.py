"""The contract between metagen and its plugins.

Plugin authors import from here only: ``hookimpl`` to mark hook implementations, the data types
strategies and scorers exchange, the protocols components satisfy, and the kit for strategy
authors: :class:`Run` (sampling, scoring, budget and trace in one helper), samples watched and
cancelled as they decode (:mod:`metagen_hooks.inflight`: :class:`Watch`, :class:`InFlight`), the trace-event
schema :data:`EVENTS`, the selection rules ``majority``, ``argmax`` and ``mbr``
(:mod:`metagen_hooks.selection`; answers extracted by :mod:`metagen_hooks.answers`), the
step-search kit (:mod:`metagen_hooks.search`: :class:`StepSearch`, :class:`BeamSearch`,
:class:`TreeNode`, ``root``, ``softmax``, ``apportion``) and a model-free Generator for tests
(:mod:`metagen_hooks.testing`). A component that runs inside a serving engine declares it with
:mod:`metagen_hooks.engines`. A host author finds the engine-free half of the host kit in
:mod:`metagen_hooks.hosting` (:class:`Capabilities`, the budget protocol :class:`HostBudget`,
seeded streams) and the errors to raise in :mod:`metagen_hooks.errors`. Nothing here imports
torch, transformers or an HTTP client.
"""

import pluggy

from .protocols import Begins, Generator, Host, PairwiseUtility, Pooled, Scorer, StepScorer, Strategy
from .types import Budget, BudgetExceeded, Candidate, Result, ScorerNeeded
from .errors import ConfigError, HostError, MetagenError, PluginError
from .hosting import Capabilities, HostBudget, Seeds, derive_seed
from .run import EVENTS, Run, check_event
from .inflight import InFlight, Watch
from .selection import argmax, majority, mbr
from .search import BeamSearch, StepSearch, TreeNode

PROJECT_NAME = "metagen"
"""The pluggy project name; also the entry-point group plugins register under."""

ENTRY_POINT_GROUP = "metagen"

KINDS = ("logits_processors", "stopping_criteria", "scorers", "strategies")
"""The four kinds of component, in the order their hooks are called."""

_DEPRECATED = {
    # name: (value, what to use instead)
    "HOSTS": (("transformers", "vllm", "tgi"),
              "the installed hosts are those the plugins register: metagen_plugins.get_registry().hosts "
              "(or `metagen plugins list`), each with its declared metagen_hooks.Capabilities"),
}


def __getattr__(name: str):
    """Deprecated names, still importable: ``HOSTS`` (the hosts metagen-plugins 0.1 registered;
    nothing reads it) warns once per use with what to use instead."""
    if name in _DEPRECATED:
        import warnings

        value, instead = _DEPRECATED[name]
        warnings.warn(f"metagen_hooks.{name} is deprecated: {instead}", DeprecationWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

HOOKS = tuple(f"register_{kind}" for kind in KINDS) + ("register_hosts", "register_commands")
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
    "Capabilities",
    "ConfigError",
    "ENTRY_POINT_GROUP",
    "Generator",
    "HOOKS",
    "Host",
    "HostBudget",
    "HostError",
    "InFlight",
    "KINDS",
    "MetagenError",
    "PROJECT_NAME",
    "PairwiseUtility",
    "PluginError",
    "Pooled",
    "Result",
    "Run",
    "Scorer",
    "ScorerNeeded",
    "Seeds",
    "StepScorer",
    "StepSearch",
    "Strategy",
    "TreeNode",
    "Watch",
    "argmax",
    "check_event",
    "derive_seed",
    "hookimpl",
    "hookspec",
    "majority",
    "mbr",
]
