"""A fixture plugin implementing all four hooks, used end to end (tests/test_outside_plugin.py)."""

import torch
from metagen_hooks import Result, hookimpl


class BanToken:
    """Never sample ``token_id``."""
    def __init__(self, token_id: int):
        self.token_id = token_id
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_id] = -float("inf")
        return scores


class StopAfter:
    """Stop each row after ``count`` new tokens."""
    def __init__(self, count: int):
        self.count, self.start = count, None
    def __call__(self, input_ids, scores, **kwargs):
        if self.start is None:
            self.start = input_ids.shape[1] - 1
        done = input_ids.shape[1] - self.start >= self.count
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


class CountChar:
    """Score a candidate by how often ``char`` occurs in it."""
    def __init__(self, char: str = "a"):
        self.char = char
    def score(self, prompt, candidates):
        return [float(c.text.count(self.char)) for c in candidates]


class BestOf:
    """Sample ``n`` and keep the highest-scoring."""
    def __init__(self, n: int = 4):
        self.n = n
    def run(self, prompt, generator, scorer, budget):
        [cands] = generator.sample([prompt], self.n)
        scores = scorer.score(prompt, cands)
        budget.charge(scorer_calls=len(cands))
        best = max(range(len(cands)), key=scores.__getitem__)
        return Result(prompt=prompt, best=cands[best], candidates=cands, scores=scores, budget=budget)


@hookimpl
def register_logits_processors(register):
    register("ban_token", BanToken)


@hookimpl
def register_stopping_criteria(register):
    register("stop_after", StopAfter)


@hookimpl
def register_scorers(register):
    register("count_char", CountChar)


@hookimpl
def register_strategies(register):
    register("best_of", BestOf)
