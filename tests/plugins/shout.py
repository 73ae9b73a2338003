"""A fixture plugin: one scorer, ``shout`` (tests/test_plugins.py, tests/test_registry.py)."""

from metagen_hooks import hookimpl

class Shout:
    '''Upper-cases nothing; a test scorer.'''
    def __init__(self, weight: float = 1.0):
        self.weight = weight
    def score(self, prompt, candidates):
        return [self.weight * len(c.text) for c in candidates]

@hookimpl
def register_scorers(register):
    register("shout", Shout)
