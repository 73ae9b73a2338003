"""The built-in strategies, one module per family: ``generate`` (plain generation), ``parallel``
(sampling, best-of-N, rejection, voting, MBR), ``adaptive`` (samples stopped in flight: ESC,
DeepConf, early rejection), ``search`` (step-level beam search, DVTS, REBASE,
particle filtering, MCTS), ``refine`` (self-refine, self-repair), ``compose`` (strategies of
strategies, chained prompts), ``program_aided`` and ``calculator_vote`` (tool use)."""

from . import adaptive, calculator_vote, compose, generate, parallel, program_aided, refine, search


def register_all(register) -> None:
    for family in (generate, parallel, adaptive, search, refine, compose, program_aided, calculator_vote):
        family.register_all(register)
