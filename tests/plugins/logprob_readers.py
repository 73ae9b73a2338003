"""A fixture plugin written as an outside author would (tests/test_reads_logprobs.py and the hosts'
log-probability tests): ``surest`` a scorer that reads the candidates' log-probabilities and
declares nothing (as every plugin written before ``reads_logprobs=`` existed); ``longest`` a
scorer declaring that it reads none; ``first_of`` a strategy declaring nothing; ``picky`` a
strategy whose reading depends on its parameter (a callable declaration)."""

from metagen_hooks import Result, hookimpl
from metagen_hooks.run import Run


class Surest:
    """The candidate whose tokens were likeliest on average (its own log-probabilities)."""

    def score(self, prompt, candidates):
        return [sum(c.logprobs) / len(c.logprobs) if c.logprobs else float("-inf") for c in candidates]


class Longest:
    """The longest text."""

    def score(self, prompt, candidates):
        return [float(len(c.text)) for c in candidates]


class FirstOf:
    """``n`` samples; the first one wins."""

    def __init__(self, n: int = 2):
        self.n = n

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("first_of", prompt, generator, scorer, budget)
        drawn = run.sample(self.n)
        return run.result(drawn[0] if drawn else None, drawn, rule="first")


class Picky(FirstOf):
    """``n`` samples; with ``by_confidence``, the one whose tokens were likeliest."""

    def __init__(self, n: int = 2, by_confidence: bool = False):
        super().__init__(n)
        self.by_confidence = by_confidence

    def run(self, prompt, generator, scorer, budget) -> Result:
        run = Run("picky", prompt, generator, scorer, budget)
        drawn = run.sample(self.n)
        if not drawn:
            return run.result(None, drawn)
        best = max(drawn, key=lambda c: sum(c.logprobs)) if self.by_confidence else drawn[0]
        return run.result(best, drawn, rule="likeliest" if self.by_confidence else "first")


@hookimpl
def register_scorers(register):
    register("surest", Surest)
    register("longest", Longest, reads_logprobs=False)


@hookimpl
def register_strategies(register):
    register("first_of", FirstOf)
    register("picky", Picky, reads_logprobs=lambda by_confidence=False, **_: by_confidence)
