"""Parallel meta-generation: draw many complete samples, then choose (survey sec. 4.1).

Every strategy here samples through the Generator (which prefills the prompt once for all N)
and records each candidate, score and selection in the trace.
"""

from __future__ import annotations

from collections import Counter

from metagen_hooks import Budget, Generator, Result, Scorer, ScorerNeeded, answers, selection
from metagen_hooks.run import Run


class _Sampled:
    """Parameters of the strategies that draw ``n`` complete samples."""

    def __init__(self, n: int = 8, max_new_tokens: int | None = None) -> None:
        _positive(n=n)
        self.n, self.max_new_tokens = n, max_new_tokens


class _Voted(_Sampled):
    """Parameters of the strategies that vote over final answers (``answer_pattern``)."""

    def __init__(self, n: int = 8, answer_pattern: str = answers.DEFAULT_PATTERN,
                 max_new_tokens: int | None = None) -> None:
        super().__init__(n, max_new_tokens)
        self.pattern = answers.checked_pattern(answer_pattern)


class Parallel(_Sampled):
    """Parallel sampling: ``n`` independent samples, all returned (for pass@k and coverage,
    Brown et al., 2024, "Large Language Monkeys"); the best is the top-scored one when a scorer
    is configured, else the first."""

    def run(self, prompt: str, generator: Generator, scorer: Scorer | None, budget: Budget) -> Result:
        run = Run("parallel", prompt, generator, scorer, budget)
        candidates = run.sample(self.n, self.max_new_tokens)
        scores = run.score(candidates) if scorer is not None else []
        index = selection.argmax(scores) if scores else (0 if candidates else None)
        return run.result(_at(candidates, index), candidates, scores, rule="first" if not scores else "argmax")


class BestOfN(_Sampled):
    """Best-of-N: sample ``n`` and keep the candidate the scorer (a verifier or reward model)
    ranks highest (Cobbe et al., 2021; Lightman et al., 2023)."""

    def run(self, prompt, generator, scorer, budget) -> Result:
        return _pooled(self, Run("best_of_n", prompt, generator, scorer, budget))

    def draw(self, run: Run, k: int):
        candidates = run.sample(k, self.max_new_tokens)
        return candidates, run.score(candidates)

    def decide(self, candidates, scores):
        """The top-scored; unsettled by the best score's distance from 1 when scores are
        probabilities (a verifier's), else by how few candidates there are."""
        index = selection.argmax(scores)
        return index, selection.score_doubt(scores), {"rule": "argmax"}


class Rejection:
    """Rejection sampling: draw batches of ``batch`` until a candidate scores at least
    ``threshold`` (accept the first such) or ``max_samples`` are spent (then the best seen)."""

    def __init__(self, threshold: float = 1.0, batch: int = 4, max_samples: int = 32,
                 max_new_tokens: int | None = None) -> None:
        _positive(batch=batch, max_samples=max_samples)
        self.threshold, self.batch, self.max_samples = threshold, batch, max_samples
        self.max_new_tokens = max_new_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("rejection", prompt, generator, scorer, budget)
        candidates, scores = [], []
        while len(candidates) < self.max_samples:
            drawn = run.sample(min(self.batch, self.max_samples - len(candidates)), self.max_new_tokens,
                               round=len(candidates) // self.batch)
            if not drawn:
                break
            new_scores = run.score(drawn)
            candidates += drawn
            scores += new_scores
            accepted = [i for i, s in enumerate(new_scores) if s >= self.threshold]
            if accepted:
                best = drawn[accepted[0]]
                return run.result(best, candidates, scores, rule="accepted", threshold=self.threshold)
        return run.result(_at(candidates, selection.argmax(scores)), candidates, scores,
                          rule="none accepted; best seen", threshold=self.threshold)


class SelfConsistency(_Voted):
    """Self-consistency (Wang et al., 2023): sample ``n`` reasoning paths and return one whose
    final answer (``answer_pattern``) has the most votes."""

    def run(self, prompt, generator, scorer, budget) -> Result:
        return _pooled(self, Run("self_consistency", prompt, generator, scorer, budget))

    def draw(self, run: Run, k: int):
        return run.sample(k, self.max_new_tokens), []

    def decide(self, candidates, scores):
        """The majority; unsettled by the chance the runner-up overtakes the leader."""
        index, votes = selection.majority(candidates, self.pattern)
        return index, 1.0 - selection.lead_probability(Counter(votes)), {"rule": "majority", "votes": votes}


class WeightedMajority(_Voted):
    """Weighted majority voting (Li et al., 2023; Uesato et al., 2022): each sample votes for its
    answer with its score (e.g. a reward model's); the answer with the largest total wins."""

    def run(self, prompt, generator, scorer, budget) -> Result:
        return _pooled(self, Run("weighted_majority", prompt, generator, scorer, budget))

    def draw(self, run: Run, k: int):
        candidates = run.sample(k, self.max_new_tokens)
        return candidates, run.score(candidates)

    def decide(self, candidates, scores):
        index, votes = selection.majority(candidates, self.pattern, weights=scores)
        return index, 1.0 - selection.lead_probability(Counter(votes)), {"rule": "weighted majority",
                                                                         "votes": votes}


class MBR(_Sampled):
    """Minimum Bayes risk decoding: the sample with the highest expected utility against the
    others. The scorer must be a pairwise utility (``exact_match``, ``edit_similarity``,
    ``chrf``, ``bleu``, ...); with none, answers are compared exactly."""

    def run(self, prompt, generator, scorer, budget) -> Result:
        from ..scorers.pairwise import ExactMatch

        utility = scorer if scorer is not None else ExactMatch()
        if not hasattr(utility, "utility"):
            raise ScorerNeeded("strategy 'mbr' needs a pairwise utility scorer (with utility(a, b)), "
                             f"got {type(utility).__name__}; try exact_match, edit_similarity or chrf")
        run = Run("mbr", prompt, generator, scorer, budget)
        candidates = run.sample(self.n, self.max_new_tokens)
        index, expected = selection.mbr(candidates, utility.utility)
        budget.charge(scorer_calls=len(candidates) * max(0, len(candidates) - 1))
        run.trace.append({"event": "scores", "scores": expected, "kind": "expected utility"})
        return run.result(_at(candidates, index), candidates, expected, rule="mbr")


class AdaptiveSelfConsistency:
    """Adaptive-consistency (Aggarwal et al., 2023): sample ``batch`` at a time and stop as soon
    as the vote is settled (the leader beats the runner-up with probability >= ``confidence``
    under a Beta posterior), or at ``max_samples``."""

    def __init__(self, batch: int = 2, max_samples: int = 16, confidence: float = 0.95,
                 answer_pattern: str = answers.DEFAULT_PATTERN, max_new_tokens: int | None = None) -> None:
        _positive(batch=batch, max_samples=max_samples)
        if not 0.5 < confidence < 1:
            raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
        self.batch, self.max_samples, self.confidence = batch, max_samples, confidence
        self.pattern, self.max_new_tokens = answers.checked_pattern(answer_pattern), max_new_tokens

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("adaptive_self_consistency", prompt, generator, scorer, budget)
        candidates: list = []
        counts: Counter = Counter()
        settled = False
        while len(candidates) < self.max_samples and not settled:
            drawn = run.sample(min(self.batch, self.max_samples - len(candidates)), self.max_new_tokens)
            if not drawn:
                break
            candidates += drawn
            counts.update(a for a in (answers.extract(c.text, self.pattern) for c in drawn) if a is not None)
            settled = selection.vote_settled(counts, self.confidence)
        index, votes = selection.majority(candidates, self.pattern)
        return run.result(_at(candidates, index), candidates, [], rule="majority", votes=votes,
                          settled=settled, samples=len(candidates))


def _pooled(strategy, run: Run) -> Result:
    """A pooled strategy's run on its own: ``n`` samples, then its choice."""
    candidates, scores = strategy.draw(run, strategy.n)
    index, _, info = strategy.decide(candidates, scores)
    return run.result(_at(candidates, index), candidates, scores, **info)


def _at(candidates, index):
    return None if index is None or not candidates else candidates[index]


def _positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def register_all(register) -> None:
    register("parallel", Parallel, caller=("n", "max_new_tokens"), reads_logprobs=False)
    register("best_of_n", BestOfN, caller=("n", "max_new_tokens"), reads_logprobs=False)
    register("rejection", Rejection, caller=("threshold", "batch", "max_samples", "max_new_tokens"),
             reads_logprobs=False)
    register("self_consistency", SelfConsistency, caller=("n", "answer_pattern", "max_new_tokens"),
             reads_logprobs=False)
    register("weighted_majority", WeightedMajority, caller=("n", "answer_pattern", "max_new_tokens"),
             reads_logprobs=False)
    register("mbr", MBR, caller=("n", "max_new_tokens"), reads_logprobs=False)
    register("adaptive_self_consistency", AdaptiveSelfConsistency, caller=("batch", "max_samples", "confidence", "answer_pattern", "max_new_tokens"),
             reads_logprobs=False)
