"""Composition (survey sec. 4.4): a strategy used as another's generator, and chained prompts."""

from __future__ import annotations

from typing import Any, Sequence

from metagen_hooks import Budget, BudgetExceeded, Candidate, Generator, Result



def _build(entry: dict[str, Any], role: str, registry):
    """A strategy object from a nested ``{"name": ..., params}`` table, validated like any other."""
    from ...components import build, check_params, params
    from ...errors import ConfigError

    if not isinstance(entry, dict) or "name" not in entry:
        raise ValueError(f"{role} must be a table with a 'name', got {entry!r}")
    try:
        info = registry.get("strategies", entry["name"])
    except ConfigError as exc:
        raise ConfigError(f"{role}: {exc}") from None
    values = params(entry)
    check_params(info, values, prefix=f"{role}: ")
    return entry["name"], build(info, values, prefix=f"{role}: ")


class StrategyGenerator:
    """A Generator whose every sample is the best candidate of a whole inner strategy run."""

    def __init__(self, name: str, strategy, generator: Generator, scorer, budget: Budget, trace: list) -> None:
        self.name, self.strategy, self.inner = name, strategy, generator
        self.scorer, self.budget, self.trace = scorer, budget, trace

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens=None, stop=None) -> list[list[Candidate]]:
        out = []
        for prompt in prompts:
            best = []
            for i in range(n):
                if self.budget.exhausted():
                    if not best:
                        raise BudgetExceeded("the budget was spent before the inner strategy ran")
                    break
                result = self.strategy.run(prompt, self.inner, self.scorer, self.budget)
                self.trace.append({"event": "inner_run", "strategy": self.name, "index": i,
                                   "trace": result.trace})
                if result.best is not None:
                    best.append(result.best)
            out.append(best)
        return out

    def extend(self, prefixes, n=1, *, max_new_tokens=None, stop=None):
        raise NotImplementedError(f"strategy {self.name!r} used as a generator produces whole candidates; "
                                  "the outer strategy must sample, not extend")


class Compose:
    """Run ``outer`` with ``inner`` as its generator: e.g. self-consistency over the winners of
    best-of-4 runs (``inner = {name = "best_of_n", n = 4}``, ``outer = {name =
    "self_consistency", n = 5}``). Both share the scorer and the budget."""

    def __init__(self, inner: dict, outer: dict, registry) -> None:
        self.inner_name, self.inner = _build(inner, "compose inner", registry)
        self.outer_name, self.outer = _build(outer, "compose outer", registry)

    def run(self, prompt, generator, scorer, budget) -> Result:
        trace: list = []
        wrapped = StrategyGenerator(self.inner_name, self.inner, generator, scorer, budget, trace)
        result = self.outer.run(prompt, wrapped, scorer, budget)
        result.trace = trace + result.trace
        result.strategy = f"compose({self.outer_name} over {self.inner_name})"
        return result


class Chain:
    """Chained prompts: each stage's ``template`` (fields ``{prompt}`` and ``{previous}``, the
    previous stage's best text) becomes that stage's prompt, run with its own ``strategy``.
    The last stage's result is the chain's, with every stage in its trace."""

    def __init__(self, stages: list[dict], registry) -> None:
        if not stages:
            raise ValueError("stages must list at least one {template, strategy} table")
        self.stages = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, dict) or "template" not in stage:
                raise ValueError(f"stages[{i}] needs a 'template' (with {{prompt}} and/or {{previous}})")
            try:
                stage["template"].format(prompt="", previous="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"stages[{i}] template may use only {{prompt}} and {{previous}}: {exc}") from None
            name, strategy = _build(stage.get("strategy", {"name": "generate"}), f"stages[{i}] strategy",
                                    registry)
            self.stages.append((stage["template"], name, strategy))

    def run(self, prompt, generator, scorer, budget) -> Result:
        trace, previous, result = [], "", None
        for i, (template, name, strategy) in enumerate(self.stages):
            stage_prompt = template.format(prompt=prompt, previous=previous)
            result = strategy.run(stage_prompt, generator, scorer, budget)
            trace.append({"event": "stage", "index": i, "strategy": name, "prompt": stage_prompt,
                          "best": result.best.text if result.best else None, "trace": result.trace})
            if result.best is None:
                break
            previous = result.best.text
        result.trace = trace
        result.strategy = "chain"
        return result


def _compose_reads(inner: dict, outer: dict, registry) -> bool:
    """Whether a composition reads log-probabilities: when its inner or outer strategy does."""
    return registry.reads_logprobs("strategies", inner) or registry.reads_logprobs("strategies", outer)


def _chain_reads(stages: list, registry) -> bool:
    """Whether a chain reads log-probabilities: when one of its stages' strategies does."""
    return any(registry.reads_logprobs("strategies", stage.get("strategy", {"name": "generate"}))
               if isinstance(stage, dict) else True for stage in stages)


def register_all(register) -> None:
    register("compose", Compose, reads_logprobs=_compose_reads)
    register("chain", Chain, reads_logprobs=_chain_reads)
