"""One budget across a dataset: spend tokens where another sample is most likely to change an
answer (compute-optimal allocation, Snell et al., 2024, done online).

Every prompt draws a first round (an eighth of the strategy's ``n``, at least 2); from then on,
whenever a draw comes back, the free slot goes to the prompt with the most doubt per sample
drawn that is not already drawing, ``step`` samples at a time, until the dataset's budget is
spent, every prompt is settled or at its cap. Doubt is the strategy's (``decide``): the
runner-up's chance to overtake the vote, one minus a verifier's best score. Dividing by the
samples drawn is what keeps a hopeless prompt (doubtful however many samples it gets) from
taking the whole budget: measured on the demo task's held-out problems with the demo verifier,
doubt alone did worse than the uniform split, doubt per sample better (docs/adaptive.md). Draws of many prompts are in flight at once, so
the host batches them as it batches any run. The strategy must be pooled
(``metagen_hooks.Pooled``: self-consistency, weighted majority, best-of-N, calculator_vote).

The total is never exceeded: each draw is given a limit out of what is left (counting what the
draws in flight may still spend), and a draw is started only when what is left covers its
samples at the mean length seen so far.
"""

from __future__ import annotations

import math
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from metagen_hooks import Budget, Candidate, Pooled, Result
from metagen_hooks.run import Run

from .components import build, params
from .errors import ConfigError

SETTLED = 1e-3  # a prompt whose doubt is below this gets no more samples


@dataclass
class _Prompt:
    index: int
    run: Run
    strategy: Any
    budget: Budget
    candidates: list[Candidate] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    doubt: float = 1.0
    drawing: bool = False
    own: float | None = None  # the prompt's own limit ([budget] max_tokens or max_flops), if any
    failed: BaseException | None = None


def allocate(runner, prompts: Sequence[str], *, total_tokens: int | None = None, total_flops: float | None = None,
             first: int | None = None, step: int = 1, cap: int | None = None,
             on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run the runner's (pooled) strategy over ``prompts`` within ``total_tokens`` generated
    tokens (or ``total_flops``) in all. ``first``: samples every prompt draws first (default an
    eighth of the strategy's ``n``, at least 2); ``step``: samples per later draw; ``cap``: most
    samples for one prompt (default ``4 * n``). Results come back in input order, each with the
    prompt's own budget and trace."""
    if (total_tokens is None) == (total_flops is None):
        raise ConfigError("give one dataset budget: total_tokens or total_flops")
    total = float(total_tokens if total_tokens is not None else total_flops)
    if total <= 0:
        raise ConfigError(f"the dataset budget must be > 0, got {total:g}")
    entry = runner.config.strategy or {"name": "generate"}
    info = runner.registry.get("strategies", entry["name"])
    probe = build(info, params(entry), prefix="[strategy]: ")
    if not isinstance(probe, Pooled):
        pooled = [name for name, i in runner.registry.components["strategies"].items()
                  if hasattr(i.factory, "draw") and hasattr(i.factory, "decide")]
        raise ConfigError(f"strategy {entry['name']!r} cannot share a dataset budget: it is not a choice among "
                          f"independent samples (metagen_hooks.Pooled). Use one of: {', '.join(sorted(pooled))}")
    first = first or max(2, probe.n // 8)
    cap = cap or 4 * probe.n
    if min(first, step, cap) < 1:
        raise ConfigError("first, step and cap must be >= 1")
    scorer = runner._scorer(runner.config, runner.host)
    longest = getattr(probe, "max_new_tokens", None) or runner.config.generation.get("max_new_tokens", 64)
    states = []
    for index, prompt in enumerate(prompts):
        budget = Budget(**runner.config.budget)
        strategy = build(info, params(entry), prefix="[strategy]: ")
        generator = runner.host.generator(budget)
        states.append(_Prompt(index, Run(entry["name"], prompt, generator, scorer, budget), strategy, budget))
    tokens = total_tokens is not None
    for state in states:
        state.own = state.budget.max_tokens if tokens else state.budget.max_flops
    spend = (lambda s: s.budget.tokens_generated) if tokens else (lambda s: s.budget.flops)

    def spent() -> float:
        return sum(spend(s) for s in states)

    in_flight: dict[Future, tuple[_Prompt, float]] = {}

    def launch(state: _Prompt, k: int, allowance: float) -> None:
        state.drawing = True
        limit = spend(state) + allowance
        limit = limit if state.own is None else min(state.own, limit)
        if tokens:
            state.budget.max_tokens = int(limit)
        else:
            state.budget.max_flops = limit
        in_flight[runner._pool.submit(_draw, state, k)] = state, allowance

    fresh = list(states)  # prompts yet to draw their first round, in order
    per_sample = None  # what a sample has cost so far (tokens or FLOPs), once one is known

    def worst(k: int) -> float:
        """What a draw of k samples may spend at most (FLOPs: before any is known, a fair share)."""
        if tokens:
            return k * longest
        return 2 * k * per_sample if per_sample else total / len(states)

    while True:
        while len(in_flight) < runner.concurrency:
            left = total - spent() - sum(allowance for _, allowance in in_flight.values())
            if fresh:
                state, k = fresh[0], first
            else:
                waiting = [s for s in states if not s.drawing and s.failed is None and s.doubt > SETTLED
                           and len(s.candidates) + step <= cap]
                if not waiting:
                    break
                state, k = max(waiting, key=lambda s: (s.doubt / len(s.candidates), -s.index)), step
            need = k * per_sample if per_sample else worst(k)
            if left < need and (in_flight or not fresh):
                break  # wait for the draws in flight to give back what they did not use
            if left <= 0:
                break
            if fresh:
                fresh.pop(0)
            launch(state, k, min(left, worst(k)))
        if not in_flight:
            break
        done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
        for future in done:
            state, _ = in_flight.pop(future)
            state.drawing = False
            if future.exception() is not None:  # this prompt fails alone
                state.failed = future.exception()
                continue
            new, scores = future.result()
            state.candidates += new
            state.scores += scores
            state.doubt = state.strategy.decide(state.candidates, state.scores)[1] if new else 0.0
        samples = sum(len(s.candidates) for s in states)
        per_sample = spent() / samples if samples else per_sample
    results = []
    for state in states:
        result = _result(state, runner.describe)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


def _draw(state: _Prompt, k: int):
    state.budget.start()
    try:
        return state.strategy.draw(state.run, k)
    finally:
        state.budget.stop()


def _result(state: _Prompt, describe) -> Result:
    run = state.run
    if state.failed is not None and not state.candidates:
        failure = describe(state.failed)
        return Result(prompt=run.prompt, best=None, budget=state.budget, strategy=run.strategy,
                      trace=run.trace + [{"event": "failed", **failure}], failures=[failure])
    index, doubt, info = state.strategy.decide(state.candidates, state.scores) if state.candidates else (None, 1.0, {})
    best = None if index is None else state.candidates[index]
    return run.result(best, state.candidates, state.scores, **info, samples=len(state.candidates),
                      doubt=None if math.isnan(doubt) else round(doubt, 6), allocated=True)

