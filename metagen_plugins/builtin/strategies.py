"""Built-in strategies."""

from __future__ import annotations

from metagen_hooks import Budget, Generator, Result, Scorer


class Generate:
    """Plain generation: one continuation per prompt, exactly what ``generate()`` would return
    with the configured processors and stopping criteria (greedy unless a sampling processor or
    ``[generation] do_sample`` asks to sample)."""

    def run(self, prompt: str, generator: Generator, scorer: Scorer | None, budget: Budget) -> Result:
        [[candidate]] = generator.sample([prompt], 1)
        trace = [{"event": "candidate", "index": 0, "text": candidate.text,
                  "finish_reason": candidate.finish_reason}]
        return Result(prompt=prompt, best=candidate, candidates=[candidate], trace=trace,
                      budget=budget, strategy="generate")


def register_all(register) -> None:
    register("generate", Generate)
