"""Self-consistency with a calculator: every sample's arithmetic is checked and its false results
replaced by the computed ones before the answers vote.

A small model usually sets up the right calculation (``13 - 5 = ...``) and then gets the
result wrong; the calculator (``calculator.repair``) supplies the result, as GSM8K's calculator
annotations do (Cobbe et al., 2021), and voting (Wang et al., 2023) then chooses among the
set-ups. With ``n = 1`` and greedy decoding it is greedy decoding with a calculator.
"""

from __future__ import annotations

from collections import Counter

from metagen_hooks import Budget, Candidate, Generator, Result, Scorer

from metagen_hooks import answers, selection
from ..scorers.calculator import repair
from metagen_hooks.run import Run


class CalculatorVote:
    """Sample ``n``, repair each sample's arithmetic with the calculator, and return the repaired
    sample whose answer (``answer_pattern``) has the most votes (ties: the answer reached first).
    Each candidate's ``meta["calculator"]`` lists its corrections; the chosen one keeps the
    model's own text in ``meta["original"]``."""

    def __init__(self, n: int = 8, answer_pattern: str = answers.DEFAULT_PATTERN,
                 max_new_tokens: int | None = None) -> None:
        if not (isinstance(n, int) and n > 0):
            raise ValueError(f"calculator_vote: n must be a positive integer, got {n!r}")
        self.n, self.pattern, self.max_new_tokens = n, answers.checked_pattern(answer_pattern), max_new_tokens

    def run(self, prompt: str, generator: Generator, scorer: Scorer | None, budget: Budget) -> Result:
        run = Run("calculator_vote", prompt, generator, scorer, budget)
        repaired, _ = self.draw(run, self.n)
        index, _, info = self.decide(repaired, [])
        # the candidates are the corrected samples (each keeps its original text in meta)
        return run.result(repaired[index] if index is not None else None, repaired, **info)

    def draw(self, run: Run, k: int) -> tuple[list[Candidate], list[float]]:
        """``k`` samples, each repaired by the calculator (one budget can span a dataset:
        metagen_hooks.Pooled)."""
        samples = run.sample(k, self.max_new_tokens)
        repaired = []
        for index, sample in enumerate(samples):
            text, corrections = repair(sample.text)
            sample.meta["calculator"] = corrections
            changed = text != sample.text  # a corrected text is no longer the model's tokens
            repaired.append(Candidate(prompt=sample.prompt, text=text,
                                      token_ids=[] if changed else sample.token_ids,
                                      logprobs=[] if changed else sample.logprobs,
                                      finish_reason=sample.finish_reason,
                                      meta={**sample.meta, "original": sample.text}))
            if corrections:
                run.trace.append({"event": "calculator", "index": index, "corrections": corrections})
        return repaired, []

    def decide(self, candidates, scores) -> tuple[int | None, float, dict]:
        """The majority after the corrections; unsettled by the chance the runner-up overtakes."""
        index, votes = selection.majority(candidates, self.pattern)
        return index, 1.0 - selection.lead_probability(Counter(votes)), {
            "rule": "majority after the calculator's corrections", "votes": votes}


def register_all(register) -> None:
    register("calculator_vote", CalculatorVote, caller=("n", "answer_pattern", "max_new_tokens"), reads_logprobs=False)
