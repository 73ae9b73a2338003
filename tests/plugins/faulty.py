"""A fixture plugin whose components fail in every way a component can: while building, while
generating, while scoring (tests/test_plugin_faults.py, tests/test_runner.py, bench/reliability.py)."""

import torch
from metagen_hooks import Result, hookimpl

LONG = 12  # inputs longer than this many tokens trigger the fault (the "long" prompt)


class Explode:
    """A logits processor that raises on long inputs."""
    def __call__(self, input_ids, scores):
        if input_ids.shape[1] > LONG:
            raise RuntimeError("explode: input too long")
        return scores


class Poison:
    """A logits processor that returns NaN, +inf or all -inf scores on long inputs."""
    def __init__(self, value: str = "nan"):
        self.value = value
    def __call__(self, input_ids, scores):
        if input_ids.shape[1] <= LONG:
            return scores
        scores = scores.clone()
        if self.value == "nan":
            scores[-1, 5] = float("nan")
        elif self.value == "inf":
            scores[-1, 5] = float("inf")
        else:
            scores[-1, :] = float("-inf")
        return scores


def halt_factory():
    def halt(input_ids, scores, **kwargs):
        if input_ids.shape[1] > LONG:
            raise LookupError("halt: cannot decide")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)
    return halt


class Grumpy:
    """A scorer that raises on long prompts."""
    def score(self, prompt, candidates):
        if "long" in prompt:
            raise ZeroDivisionError("grumpy scorer")
        return [1.0 for _ in candidates]


class Fragile:
    """A strategy that raises on long prompts, after generating."""
    def run(self, prompt, generator, scorer, budget):
        [[c]] = generator.sample([prompt], 1, max_new_tokens=2)
        if "long" in prompt:
            raise KeyError("fragile strategy")
        return Result(prompt=prompt, best=c, candidates=[c])


class Unbuildable:
    """A scorer whose factory raises."""
    def __init__(self):
        raise RuntimeError("cannot build")


@hookimpl
def register_logits_processors(register):
    register("explode", Explode)
    register("poison", Poison)


@hookimpl
def register_stopping_criteria(register):
    register("halt", halt_factory)


@hookimpl
def register_scorers(register):
    register("grumpy", Grumpy)
    register("unbuildable", Unbuildable)


@hookimpl
def register_strategies(register):
    register("fragile", Fragile)
