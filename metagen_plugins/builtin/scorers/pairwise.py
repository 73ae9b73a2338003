"""Pairwise utilities for MBR: a candidate's score is its mean utility against the others
(``metagen_hooks.selection.mbr``). Plugins add more (chrF/BLEU in metagen-sacrebleu, embedding
cosine in metagen-embeddings)."""

from __future__ import annotations

import difflib
from typing import Sequence

from metagen_hooks import Candidate, answers


class _Pairwise:
    """MBR scoring shared by pairwise utilities: a candidate's mean utility against the others."""

    def utility(self, hypothesis: str, reference: str) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        from metagen_hooks.selection import mbr

        return mbr(candidates, self.utility)[1]


class ExactMatch(_Pairwise):
    """1 when two outputs agree, else 0: on their extracted answers when ``answer_pattern`` is
    set (MBR then equals majority voting), else on the whole text."""

    def __init__(self, answer_pattern: str | None = answers.DEFAULT_PATTERN) -> None:
        self.pattern = answers.checked_pattern(answer_pattern) if answer_pattern is not None else None

    def utility(self, hypothesis: str, reference: str) -> float:
        return answers.agree(hypothesis, reference, self.pattern)


class EditSimilarity(_Pairwise):
    """Character edit similarity in [0, 1] (difflib's ratio: 2 x matches / total length)."""

    def utility(self, hypothesis: str, reference: str) -> float:
        return difflib.SequenceMatcher(None, hypothesis, reference, autojunk=False).ratio()


def register_all(register) -> None:
    register("exact_match", ExactMatch, caller=("answer_pattern",), reads_logprobs=False)
    register("edit_similarity", EditSimilarity, reads_logprobs=False)
