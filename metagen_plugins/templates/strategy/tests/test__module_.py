"""The plugin's own tests, on metagen_hooks.testing.ScriptedGenerator: a Generator that plays
scripted texts, with no model and no torch, keeping the budget as a host does."""

import pytest
from metagen_hooks import Budget, ScorerNeeded
from metagen_hooks.testing import ScriptedGenerator

from @module@ import FirstPassing


class Contains:
    """A verifier: 1.0 for a candidate whose text contains ``word``, else 0.0."""

    def __init__(self, word):
        self.word = word

    def score(self, prompt, candidates):
        return [1.0 if self.word in c.text else 0.0 for c in candidates]


SCRIPT = ["The answer is 5.", "The answer is 6.", "The answer is 7.", "The answer is 7."]


def test_stops_at_the_first_passing_candidate():
    generator = ScriptedGenerator(SCRIPT)
    result = FirstPassing(n=8, batch=2).run("What is 3 + 4?", generator, Contains("7"), generator.budget)
    assert result.best.text == "The answer is 7."
    assert generator.budget.samples == 4 and len(result.candidates) == 4  # two batches, not eight samples
    assert result.scores == [0.0, 0.0, 1.0, 1.0] and result.trace[-1]["rule"] == "first passing"


def test_without_a_passing_candidate_it_draws_n_and_the_best_scored_wins():
    class Graded:  # the answer's number / 10: nothing reaches the threshold 1.0
        def score(self, prompt, candidates):
            return [int(c.text.rstrip(".").split()[-1]) / 10 for c in candidates]

    generator = ScriptedGenerator(SCRIPT)
    result = FirstPassing(n=3, batch=2).run("What is 3 + 4?", generator, Graded(), generator.budget)
    assert generator.budget.samples == 3 and result.scores == [0.5, 0.6, 0.7]
    assert result.best.text == "The answer is 7." and result.trace[-1]["rule"] == "highest score"


def test_stays_within_the_budget():
    generator = ScriptedGenerator(SCRIPT, Budget(max_samples=3))
    result = FirstPassing(n=8, batch=2).run("What is 3 + 4?", generator, Contains("9"), generator.budget)
    assert generator.budget.samples == 3 and len(result.candidates) == 3
    assert "stopped" in result.trace[-1]  # it says why it stopped early


def test_needs_a_scorer_and_sane_parameters():
    generator = ScriptedGenerator(SCRIPT)
    with pytest.raises(ScorerNeeded, match="needs a \\[scorer\\]"):
        FirstPassing().run("What is 3 + 4?", generator, None, generator.budget)
    assert generator.calls == []  # nothing was generated
    with pytest.raises(ValueError, match="n and batch must be >= 1"):
        FirstPassing(batch=0)


def test_metagen_finds_the_strategy():
    metagen_plugins = pytest.importorskip("metagen_plugins")
    found = metagen_plugins.components("strategies")["@name@"]
    assert found["distribution"] == "@dist@"
    assert found["parameters"] == ["n: int = 8", "batch: int = 2", "threshold: float = 1.0"]
