"""The built-in logits processors, one module per family: ``standard`` (the ones transformers
implements, registered as its own classes), ``penalties`` (frequency/presence), ``mirostat``,
``multimodel`` (contrastive decoding, DExperts, proxy tuning) and ``grammar`` (constraints)."""

from . import grammar, mirostat, multimodel, penalties, standard


def register_all(register) -> None:
    for family in (standard, penalties, mirostat, multimodel, grammar):
        family.register_all(register)
