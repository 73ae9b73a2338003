"""A fixture plugin: a host whose generators are metagen_hooks.testing.ScriptedGenerator (no model).

Each prompt names its script: "easy" prompts always answer 7; "split" prompts alternate between
two answers; "broken" prompts raise. Every sample is six words long. The ``likes_seven``
scorer is a verifier that trusts answer 7."""

from metagen_hooks import hookimpl
from metagen_hooks.testing import ScriptedGenerator


def script(prompt, prefix, i):
    if prompt.startswith("broken"):
        raise RuntimeError("the scripted model broke on this prompt")
    if prompt.startswith("split"):
        return f"so it is #### {3 + i % 2} ok"
    return "so it is #### 7 ok"


class ScriptedHost:
    def __init__(self, config, registry, model=None, tokenizer=None):
        self.generators = []

    def generator(self, budget, config=None):
        generator = ScriptedGenerator(script, budget)
        self.generators.append(generator)
        return generator

    def context(self):
        return {}

    def close(self):
        pass


class LikesSeven:
    """A verifier sure of answer 7 (0.9), doubtful of every other (0.2)."""

    def score(self, prompt, candidates):
        return [0.9 if "#### 7" in c.text else 0.2 for c in candidates]


@hookimpl
def register_scorers(register):
    register("likes_seven", LikesSeven)


@hookimpl
def register_hosts(register):
    register("scripted", ScriptedHost, settings={})
