"""The built-in scorers, one module per family: ``step_checker`` and ``calculator`` (rule and
tool verifiers), ``code_tests`` (code execution in the sandbox), ``logprob``, ``model_scorers``
(outcome and process reward models, LLM-as-judge), ``served`` (the reward models on a vLLM
server) and ``pairwise`` (utilities for MBR).
``gather`` merges concurrent calls of a model-backed scorer into shared batches."""

from . import calculator, code_tests, logprob, model_scorers, pairwise, served, step_checker


def register_all(register) -> None:
    for family in (step_checker, logprob, pairwise, model_scorers, served, code_tests, calculator):
        family.register_all(register)
