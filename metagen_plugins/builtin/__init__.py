"""metagen's built-in plugin: registers its components through the same hooks outside plugins use.

One package per kind of component (``processors``, ``scorers``, ``strategies``; the stopping
criteria are one module, ``stopping``), one module per family inside it. Modules that used to be
here still import by their old paths (``metagen_plugins.moved.MOVED``)."""

from metagen_hooks import hookimpl

from .. import moved
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


def __getattr__(name: str):
    # the modules that moved out of this package, as attributes (moved.MOVED: their old paths)
    return moved.attribute(__name__, name)
