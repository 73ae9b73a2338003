"""The plain strategy: what generate() alone would do."""

from __future__ import annotations

from metagen_hooks import Budget, Generator, Result, Scorer

from metagen_hooks.run import Run


class Generate:
    """Plain generation: one continuation per prompt, exactly what ``generate()`` would return
    with the configured processors and stopping criteria (greedy unless a sampling processor or
    ``[generation] do_sample`` asks to sample)."""

    def run(self, prompt: str, generator: Generator, scorer: Scorer | None, budget: Budget) -> Result:
        run = Run("generate", prompt, generator, scorer, budget)
        candidates = run.sample(1)
        return run.result(candidates[0] if candidates else None, candidates, rule="only candidate")


def register_all(register) -> None:
    register("generate", Generate, reads_logprobs=False)
