"""chrF and BLEU as pairwise utilities for minimum Bayes risk selection, through sacrebleu."""

from __future__ import annotations

from typing import Sequence

from metagen_hooks import Candidate, hookimpl, mbr


class _SacrebleuUtility:
    """Shared MBR scoring: a candidate's mean utility against every other candidate."""

    metric = None  # a sacrebleu metric object, set by subclasses

    def utility(self, hypothesis: str, reference: str) -> float:
        return float(self.metric.sentence_score(hypothesis, [reference]).score)

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return mbr(candidates, self.utility)[1]


class ChrF(_SacrebleuUtility):
    """chrF (Popović, 2015): character n-gram F-score; ``word_order=2`` gives chrF++."""

    def __init__(self, char_order: int = 6, word_order: int = 0, beta: int = 2) -> None:
        from sacrebleu.metrics import CHRF

        if char_order < 1 or word_order < 0 or beta < 1:
            raise ValueError("char_order and beta must be >= 1, word_order >= 0")
        self.metric = CHRF(char_order=char_order, word_order=word_order, beta=beta)


class Bleu(_SacrebleuUtility):
    """Sentence BLEU (Papineni et al., 2002) with sacrebleu's smoothing (default ``exp``)."""

    def __init__(self, max_ngram_order: int = 4, smooth_method: str = "exp") -> None:
        from sacrebleu.metrics import BLEU

        if smooth_method not in ("none", "floor", "add-k", "exp"):
            raise ValueError(f"smooth_method must be none, floor, add-k or exp; got {smooth_method!r}")
        self.metric = BLEU(max_ngram_order=max_ngram_order, smooth_method=smooth_method,
                           effective_order=True)


@hookimpl
def register_scorers(register):
    register("chrf", ChrF, reads_logprobs=False)
    register("bleu", Bleu, reads_logprobs=False)
