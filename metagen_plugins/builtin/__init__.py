"""metagen's built-in plugin: registers its components through the same hooks outside plugins use.

One package per kind of component (``processors``, ``scorers``, ``strategies``; the stopping
criteria are one module, ``stopping``), one module per family inside it."""

import importlib
import sys

from metagen_hooks import hookimpl

from . import processors, scorers, stopping, strategies


@hookimpl
def register_logits_processors(register):
    processors.register_all(register)


@hookimpl
def register_stopping_criteria(register):
    stopping.register_all(register)


@hookimpl
def register_scorers(register):
    scorers.register_all(register)


@hookimpl
def register_strategies(register):
    strategies.register_all(register)


# Where this package's modules used to be, so that imports written against the old paths keep
# working: the kit for strategy authors moved to metagen_hooks, the sandbox out of the
# components, and the components into one package per kind.
MOVED = {
    "answers": "metagen_hooks.answers",
    "run_state": "metagen_hooks.run",
    "selection": "metagen_hooks.selection",
    "sandbox": "metagen_plugins.sandbox",
    "penalties": f"{__name__}.processors.penalties",
    "mirostat": f"{__name__}.processors.mirostat",
    "multimodel": f"{__name__}.processors.multimodel",
    "grammar": f"{__name__}.processors.grammar",
    "model_scorers": f"{__name__}.scorers.model_scorers",
    "calculator": f"{__name__}.scorers.calculator",
    "gather": f"{__name__}.scorers.gather",
    "parallel": f"{__name__}.strategies.parallel",
    "search": f"{__name__}.strategies.search",
    "refine": f"{__name__}.strategies.refine",
    "compose": f"{__name__}.strategies.compose",
    "program_aided": f"{__name__}.strategies.program_aided",
    "calculator_vote": f"{__name__}.strategies.calculator_vote",
}
for _old, _new in MOVED.items():
    sys.modules[f"{__name__}.{_old}"] = globals()[_old] = importlib.import_module(_new)
