"""@dist@: a metagen plugin registering the ``@name@`` scorer."""

from __future__ import annotations

from typing import Sequence

from metagen_hooks import Candidate, hookimpl


class KeywordScorer:
    """1.0 for a candidate whose text contains ``keyword``, else 0.0 (higher is better)."""

    def __init__(self, keyword: str) -> None:
        if not keyword:
            raise ValueError("keyword must be a non-empty string")
        self.keyword = keyword

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return [1.0 if self.keyword in c.text else 0.0 for c in candidates]


@hookimpl
def register_scorers(register):
    # The factory's signature is the parameter schema metagen checks configurations against;
    # reads_logprobs=False: it reads the text only, so a server need not send log-probabilities.
    register("@name@", KeywordScorer, reads_logprobs=False)
