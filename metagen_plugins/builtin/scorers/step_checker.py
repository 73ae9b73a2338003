"""The demo task's exact process verifier (a tool as verifier)."""

from __future__ import annotations

from typing import Sequence

from metagen_hooks import Candidate


class StepChecker:
    """Exact process verifier for the demo arithmetic task (a tool as verifier): a candidate's
    score is 1 when every step and the final answer are right.

    ``score_steps`` gives, per step, 1.0 while every step so far is right and 0.0 from the first
    wrong one on — the quantity a process reward model estimates, so any aggregate works.
    """

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]:
        from itertools import accumulate

        from ...demo.task import check_steps

        return [[float(ok) for ok in accumulate(check_steps(prompt, c.text), lambda a, b: a and b)]
                for c in candidates]

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        from ...demo.task import is_correct

        steps = self.score_steps(prompt, candidates)
        return [float(all(s) and bool(s) and is_correct(prompt, c.text)) for s, c in zip(steps, candidates)]


def register_all(register) -> None:
    register("step_checker", StepChecker, reads_logprobs=False)
