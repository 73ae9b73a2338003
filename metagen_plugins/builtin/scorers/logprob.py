"""Sequence log-probability under the generating model, from the candidate's own per-token
log-probs (no second model)."""

from __future__ import annotations

from typing import Literal, Sequence

from metagen_hooks import Candidate


class LogProb:
    """Sequence log-probability under the generating model: ``mean`` (length-normalised) or
    ``sum`` of the candidate's per-token log-probs."""

    def __init__(self, reduce: Literal["mean", "sum"] = "mean") -> None:
        self.reduce = reduce

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        out = []
        for index, c in enumerate(candidates):
            if (c.token_ids or c.text) and not c.logprobs:
                raise ValueError(f"scorer 'logprob': candidate {index} has text but no per-token log-probabilities, "
                                 f"so its score would be made up; the host was not asked for them ([host] logprobs = "
                                 f"false, or a trace of a run whose components read none). Set [host] logprobs = true "
                                 f"and run again, or choose another scorer")
            total = sum(c.logprobs)
            out.append(total / max(1, len(c.logprobs)) if self.reduce == "mean" else total)
        return out


def register_all(register) -> None:
    register("logprob", LogProb, caller=("reduce",), reads_logprobs=True)
