"""The built-in strategies, one module per family: ``generate`` (plain generation), ``parallel``
(sampling, best-of-N, rejection, voting, MBR), ``search`` (step-level beam search, DVTS, REBASE,
particle filtering, MCTS), ``refine`` (self-refine, self-repair), ``compose`` (strategies of
strategies, chained prompts), ``program_aided`` and ``calculator_vote`` (tool use)."""

from . import calculator_vote, compose, generate, parallel, program_aided, refine, search


def register_all(register) -> None:
    for family in (generate, parallel, search, refine, compose, program_aided, calculator_vote):
        family.register_all(register)
