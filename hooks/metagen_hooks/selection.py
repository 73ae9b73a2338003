"""Selection rules: pure functions from candidates (and scores) to a choice.

Strategies use them online; ``metagen reselect`` applies them offline to a trace, so a
selection can be re-run without generating again.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Callable, Sequence

from .types import Candidate

from . import answers


def argmax(scores: Sequence[float]) -> int | None:
    """The first index of the highest score (None for no candidates)."""
    if not scores:
        return None
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def majority(candidates: Sequence[Candidate], pattern: str = answers.DEFAULT_PATTERN,
             weights: Sequence[float] | None = None) -> tuple[int | None, dict[str, float]]:
    """Self-consistency (Wang et al., 2023): the answer with the most votes, each candidate
    voting with its weight (1 when ``weights`` is None: plain majority). Returns the index of the
    first candidate with that answer and the vote table. Candidates with no answer do not vote;
    ties go to the answer reached first."""
    votes: dict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for i, c in enumerate(candidates):
        answer = answers.extract(c.text, pattern)
        if answer is None:
            continue
        votes[answer] += 1.0 if weights is None else float(weights[i])
        first.setdefault(answer, i)
    if not votes:
        return (0 if candidates else None), {}
    winner = max(votes, key=lambda a: (votes[a], -first[a]))
    return first[winner], dict(votes)


def mbr(candidates: Sequence[Candidate], utility: Callable[[str, str], float]) -> tuple[int | None, list[float]]:
    """Minimum Bayes risk (Kumar & Byrne, 2004; Eikema & Aziz, 2020): the candidate with the
    highest mean utility against the others, the samples standing in for the model's
    distribution."""
    texts = [c.text for c in candidates]
    if len(texts) < 2:
        return (0 if texts else None), [0.0] * len(texts)
    expected = [sum(utility(h, r) for j, r in enumerate(texts) if j != i) / (len(texts) - 1)
                for i, h in enumerate(texts)]
    return argmax(expected), expected


def vote_settled(counts: Counter, confidence: float) -> bool:
    """Adaptive-consistency stopping rule (Aggarwal et al., 2023): under a uniform Beta prior,
    the probability that the leading answer's share exceeds the runner-up's is at least
    ``confidence``. For integer counts a, b this is P(Binomial(a + b + 1, 1/2) <= a)."""
    return bool(counts) and lead_probability(counts) >= confidence


def lead_probability(counts: Counter) -> float:
    """The probability that the leading answer's share exceeds the runner-up's, under a uniform
    Beta prior (see :func:`vote_settled`); 0.5 with no votes. Counts may be weights (rounded)."""
    import math

    top = counts.most_common(2)
    if not top:
        return 0.5
    a = int(round(top[0][1]))
    b = int(round(top[1][1])) if len(top) > 1 else 0
    trials = a + b + 1
    return sum(math.comb(trials, k) for k in range(a + 1)) / 2 ** trials


def score_doubt(scores: Sequence[float]) -> float:
    """How unsettled a best-of-N choice is: one minus the best score when the scores are
    probabilities (a verifier's), else ``1 / (1 + len(scores))`` (more samples, less doubt);
    1.0 with none."""
    if not scores:
        return 1.0
    if all(0.0 <= s <= 1.0 for s in scores):
        return 1.0 - max(scores)
    return 1.0 / (1 + len(scores))
