"""Built-in scorers that need no model: a rule verifier for the demo task, sequence
log-probability, and pairwise utilities for MBR."""

from __future__ import annotations

import difflib
from typing import Literal, Sequence

from metagen_hooks import Candidate

from metagen_hooks import answers


class StepChecker:
    """Exact process verifier for the demo arithmetic task (a tool as verifier): a candidate's
    score is 1 when every step and the final answer are right.

    ``score_steps`` gives, per step, 1.0 while every step so far is right and 0.0 from the first
    wrong one on — the quantity a process reward model estimates, so any aggregate works.
    """

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]:
        from itertools import accumulate

        from ..demo.task import check_steps

        return [[float(ok) for ok in accumulate(check_steps(prompt, c.text), lambda a, b: a and b)]
                for c in candidates]

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        from ..demo.task import is_correct

        steps = self.score_steps(prompt, candidates)
        return [float(all(s) and bool(s) and is_correct(prompt, c.text)) for s, c in zip(steps, candidates)]


class LogProb:
    """Sequence log-probability under the generating model: ``mean`` (length-normalised) or
    ``sum`` of the candidate's per-token log-probs."""

    def __init__(self, reduce: Literal["mean", "sum"] = "mean") -> None:
        self.reduce = reduce

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        out = []
        for c in candidates:
            total = sum(c.logprobs)
            out.append(total / max(1, len(c.logprobs)) if self.reduce == "mean" else total)
        return out


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
        self.pattern = answer_pattern

    def utility(self, hypothesis: str, reference: str) -> float:
        return answers.agree(hypothesis, reference, self.pattern)


class EditSimilarity(_Pairwise):
    """Character edit similarity in [0, 1] (difflib's ratio: 2 x matches / total length)."""

    def utility(self, hypothesis: str, reference: str) -> float:
        return difflib.SequenceMatcher(None, hypothesis, reference, autojunk=False).ratio()


def register_all(register) -> None:
    register("step_checker", StepChecker)
    register("logprob", LogProb)
    register("exact_match", ExactMatch)
    register("edit_similarity", EditSimilarity)
