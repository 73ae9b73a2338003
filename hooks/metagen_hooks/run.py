"""The run helper for strategy authors: what every strategy does the same way. Ask the
Generator, stay within the budget, charge scorer calls, and record the trace in the event format
that ``metagen reselect`` and ``metagen plot`` read (:data:`EVENTS`).

    class FirstOfN:
        def __init__(self, n: int = 4):
            self.n = n

        def run(self, prompt, generator, scorer, budget):
            run = Run("first_of_n", prompt, generator, scorer, budget)
            candidates = run.sample(self.n)
            return run.result(candidates[0] if candidates else None, candidates, rule="first")
"""

from __future__ import annotations

from typing import Any, Sequence

from . import inflight
from .inflight import Watch
from .protocols import Generator, Scorer
from .types import Budget, BudgetExceeded, Candidate, Result, ScorerNeeded


EVENTS: dict[str, dict[str, str]] = {
    "candidate": {"candidate": "the candidate (Candidate.to_dict()); a strategy may add fields such as "
                               "round or depth, and parent (the index of the prefix it extends)"},
    "scores": {"scores": "one float per candidate just scored, in order"},
    "step_scores": {"step_scores": "one list of step scores per candidate", "scores": "each one aggregated"},
    "select": {"index": "the chosen candidate's index among the result's candidates (None: none)"},
    "budget_exhausted": {"reason": "what ran out; the strategy selected among what it had"},
    "failed": {"kind": "component or host", "error": "the exception", "message": "one line naming the culprit"},
}
"""The trace events every strategy shares, and the fields each one has (besides ``event``).
:class:`Run` writes them; a strategy may add its own events (any other name, JSON values only),
which readers pass over. A trace file wraps each prompt's events in a ``run`` line (prompt,
strategy, configuration) and a ``result`` line (candidates, scores, best, budget)."""


def check_event(event: dict[str, Any]) -> None:
    """Raise ValueError when ``event`` is not a trace event: no ``event`` name, or one of
    :data:`EVENTS` without its fields."""
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise ValueError(f"a trace event is a dict with an 'event' name, got {event!r}")
    missing = [k for k in EVENTS.get(event["event"], {}) if k not in event]
    if missing:
        raise ValueError(f"trace event {event['event']!r} lacks {', '.join(missing)}: {event!r}")


class Run:
    """One strategy run on one prompt: its generator, scorer, budget and trace."""

    def __init__(self, strategy: str, prompt: str, generator: Generator, scorer: Scorer | None,
                 budget: Budget) -> None:
        self.strategy, self.prompt = strategy, prompt
        self.generator, self.scorer, self.budget = generator, scorer, budget
        self.trace: list[dict] = []
        self.stopped: str | None = None  # why generation ended early (budget), if it did

    def sample(self, n: int, max_new_tokens: int | None = None, stop: Sequence[str] | None = None,
               prefixes: Sequence[Candidate] | None = None, watch: Watch | None = None,
               **meta) -> list[list[Candidate]] | list[Candidate]:
        """``n`` samples of the prompt (a flat list), or ``n`` continuations of each prefix (a
        list per prefix); empty once the budget is spent. ``watch``: see them as they decode and
        cancel any (:mod:`metagen_hooks.inflight`); cancelled ones come back with
        ``finish_reason "cancelled"``."""
        try:
            if prefixes is None:
                if watch is None:
                    [out] = self.generator.sample([self.prompt], n, max_new_tokens=max_new_tokens, stop=stop)
                else:
                    [out] = inflight.sample(self.generator, [self.prompt], n, watch, max_new_tokens=max_new_tokens,
                                            stop=stop)
                groups = [out]
            elif watch is None:
                groups = self.generator.extend(list(prefixes), n, max_new_tokens=max_new_tokens, stop=stop)
            else:
                groups = inflight.extend(self.generator, list(prefixes), n, watch, max_new_tokens=max_new_tokens,
                                         stop=stop)
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
            raise ScorerNeeded(f"strategy {self.strategy!r} needs a [scorer]; configure one")
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
