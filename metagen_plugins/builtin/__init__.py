"""metagen's built-in plugin: registers its components through the same hooks outside plugins use."""

from metagen_hooks import hookimpl

from . import (calculator, calculator_vote, compose, grammar, mirostat, model_scorers, multimodel, parallel, penalties, processors,
               program_aided, refine, sandbox, scorers, search, stopping, strategies)


@hookimpl
def register_logits_processors(register):
    processors.register_all(register)
    penalties.register_all(register)
    mirostat.register_all(register)
    multimodel.register_all(register)
    grammar.register_all(register)


@hookimpl
def register_stopping_criteria(register):
    stopping.register_all(register)


@hookimpl
def register_scorers(register):
    scorers.register_all(register)
    model_scorers.register_all(register)
    sandbox.register_all(register)
    calculator.register_all(register)


@hookimpl
def register_strategies(register):
    strategies.register_all(register)
    parallel.register_all(register)
    search.register_all(register)
    refine.register_all(register)
    compose.register_all(register)
    program_aided.register_all(register)
    calculator_vote.register_all(register)
