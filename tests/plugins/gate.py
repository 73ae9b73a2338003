"""A fixture plugin: a strategy that waits for the test to open a gate, or raises
(tests/serve/test_serve.py)."""

import threading
from metagen_hooks import Result, hookimpl

opened = threading.Event()
started = []


class Gate:
    """Generates after the test opens the gate; raises on prompts saying 'explode'."""
    def run(self, prompt, generator, scorer, budget):
        started.append(prompt)
        if "explode" in prompt:
            raise ZeroDivisionError("the gate strategy exploded")
        opened.wait(60)
        [[c]] = generator.sample([prompt], 1, max_new_tokens=3)
        return Result(prompt=prompt, best=c, candidates=[c])


@hookimpl
def register_strategies(register):
    register("gate", Gate)
