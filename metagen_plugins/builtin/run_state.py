"""What every strategy does the same way: ask the Generator, stay within the budget, charge
scorer calls and record the trace."""

from __future__ import annotations

from typing import Sequence

from metagen_hooks import Budget, BudgetExceeded, Candidate, Generator, Result, Scorer


class Run:
    """One strategy run on one prompt: its generator, scorer, budget and trace."""

    def __init__(self, strategy: str, prompt: str, generator: Generator, scorer: Scorer | None,
                 budget: Budget) -> None:
        self.strategy, self.prompt = strategy, prompt
        self.generator, self.scorer, self.budget = generator, scorer, budget
        self.trace: list[dict] = []
        self.stopped: str | None = None  # why generation ended early (budget), if it did

    def sample(self, n: int, max_new_tokens: int | None = None, stop: Sequence[str] | None = None,
               prefixes: Sequence[Candidate] | None = None, **meta) -> list[list[Candidate]] | list[Candidate]:
        """``n`` samples of the prompt (a flat list), or ``n`` continuations of each prefix (a
        list per prefix); empty once the budget is spent."""
        try:
            if prefixes is None:
                [out] = self.generator.sample([self.prompt], n, max_new_tokens=max_new_tokens, stop=stop)
                groups = [out]
            else:
                groups = self.generator.extend(list(prefixes), n, max_new_tokens=max_new_tokens, stop=stop)
        except BudgetExceeded as exc:
            self.stopped = str(exc)
            self.trace.append({"event": "budget_exhausted", "reason": str(exc)})
            return [] if prefixes is None else [[] for _ in prefixes]
        for parent, group in enumerate(groups):
            for c in group:
                self.trace.append({"event": "candidate", **meta,
                                   **({"parent": parent} if prefixes is not None else {}),
                                   "candidate": c.to_dict()})
        return groups[0] if prefixes is None else groups

    def score(self, candidates: Sequence[Candidate], **meta) -> list[float]:
        if self.scorer is None:
            raise ValueError(f"strategy {self.strategy!r} needs a [scorer]; configure one")
        if not candidates:
            return []
        scores = [float(s) for s in self.scorer.score(self.prompt, list(candidates))]
        self.budget.charge(scorer_calls=len(candidates))
        self.trace.append({"event": "scores", **meta, "scores": scores})
        return scores

    def step_scores(self, candidates: Sequence[Candidate], aggregate: str = "last", **meta) -> list[float]:
        """A process reward per candidate: its step scores aggregated by ``last``, ``min`` or
        ``prod``; a scorer with no step scores falls back to its whole-candidate score."""
        if not candidates:
            return []
        if self.scorer is None or not hasattr(self.scorer, "score_steps"):
            return self.score(candidates, **meta)
        per_step = self.scorer.score_steps(self.prompt, list(candidates))
        self.budget.charge(scorer_calls=len(candidates))
        scores = [aggregate_steps(steps, aggregate) for steps in per_step]
        self.trace.append({"event": "step_scores", **meta, "step_scores": per_step, "scores": scores})
        return scores

    def result(self, best: Candidate | None, candidates: list[Candidate], scores: list[float] | None = None,
               **selection) -> Result:
        if self.stopped:
            selection["stopped"] = self.stopped
        self.trace.append({"event": "select", "index": candidates.index(best) if best in candidates else None,
                           **selection})
        return Result(prompt=self.prompt, best=best, candidates=candidates, scores=list(scores or []),
                      trace=self.trace, budget=self.budget, strategy=self.strategy)


def aggregate_steps(steps: Sequence[float], how: str) -> float:
    if not steps:
        return 0.0
    if how == "min":
        return min(steps)
    if how == "prod":
        out = 1.0
        for s in steps:
            out *= s
        return out
    return steps[-1]
