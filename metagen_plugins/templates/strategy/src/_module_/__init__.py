"""@dist@: a metagen plugin registering the ``@name@`` strategy."""

from __future__ import annotations

from metagen_hooks import Result, Run, ScorerNeeded, argmax, hookimpl


class FirstPassing:
    """Sample ``batch`` candidates at a time, score them, and stop at the first one the scorer
    passes (score >= ``threshold``), drawing at most ``n``; when none passes, the best-scored
    wins. Easy prompts cost one batch, hard ones up to ``n`` samples."""

    def __init__(self, n: int = 8, batch: int = 2, threshold: float = 1.0) -> None:
        if n < 1 or batch < 1:
            raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
        self.n, self.batch, self.threshold = n, batch, threshold

    def run(self, prompt, generator, scorer, budget) -> Result:
        if scorer is None:  # say so before generating anything
            raise ScorerNeeded("strategy '@name@' needs a [scorer] (a verifier) to pass candidates")
        run = Run("@name@", prompt, generator, scorer, budget)
        candidates: list = []
        scores: list[float] = []
        while len(candidates) < self.n:
            new = run.sample(min(self.batch, self.n - len(candidates)))
            if not new:
                break  # the budget is spent: choose among what we have
            candidates += new
            scores += run.score(new)
            if max(scores) >= self.threshold:
                break
        passing = [i for i, s in enumerate(scores) if s >= self.threshold]
        index = passing[0] if passing else argmax(scores)
        return run.result(None if index is None else candidates[index], candidates, scores,
                          rule="first passing" if passing else "highest score")


@hookimpl
def register_strategies(register):
    # The factory's signature is the parameter schema metagen checks configurations against;
    # caller= lists the parameters a client of `metagen serve` may set per request;
    # reads_logprobs=False: it reads no log-probabilities, so a server need not send them.
    register("@name@", FirstPassing, caller=("n", "batch", "threshold"), reads_logprobs=False)
