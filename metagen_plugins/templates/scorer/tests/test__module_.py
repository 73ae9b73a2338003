"""The plugin's own tests: the component works, and metagen finds it once installed."""

import pytest
from metagen_hooks import Candidate

from @module@ import KeywordScorer


def test_scores_candidates_containing_the_keyword():
    scorer = KeywordScorer(keyword="19")
    candidates = [Candidate(prompt="What is 12 + 7?", text="12 + 7 = 19"),
                  Candidate(prompt="What is 12 + 7?", text="12 + 7 = 9")]
    assert scorer.score("What is 12 + 7?", candidates) == [1.0, 0.0]


def test_rejects_an_empty_keyword():
    with pytest.raises(ValueError, match="keyword"):
        KeywordScorer(keyword="")


def test_metagen_finds_the_scorer():
    metagen_plugins = pytest.importorskip("metagen_plugins")
    found = metagen_plugins.components("scorers")
    assert found["@name@"]["distribution"] == "@dist@"
