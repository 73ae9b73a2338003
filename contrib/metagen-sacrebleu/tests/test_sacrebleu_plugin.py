import importlib.metadata

import pytest

pytest.importorskip("sacrebleu")

import metagen_plugins
from metagen_hooks import Candidate, PairwiseUtility, Scorer


def test_installed_through_the_entry_point():
    eps = importlib.metadata.entry_points(group="metagen")
    assert "sacrebleu" in {ep.name for ep in eps}
    info = metagen_plugins.components("scorers")
    assert info["chrf"]["distribution"] == "metagen-sacrebleu"
    assert info["bleu"]["plugin"] == "sacrebleu"


def test_chrf_matches_sacrebleu_and_ranks_the_consensus_first():
    from sacrebleu.metrics import CHRF

    from metagen_sacrebleu import ChrF

    scorer = ChrF()
    assert isinstance(scorer, Scorer) and isinstance(scorer, PairwiseUtility)
    assert scorer.utility("the cat sat", "the cat sat") == pytest.approx(100.0)
    expected = CHRF().sentence_score("the cat sat", ["a cat sat"]).score
    assert scorer.utility("the cat sat", "a cat sat") == pytest.approx(expected)
    cands = [Candidate("p", t) for t in ["the cat sat", "the cat sat down", "zebra"]]
    scores = scorer.score("p", cands)
    assert scores.index(max(scores)) in (0, 1) and scores[2] == min(scores)


def test_bad_parameter_is_rejected_at_validation():
    with pytest.raises(metagen_plugins.ConfigError, match="smooth_method"):
        metagen_plugins.run({"scorer": {"name": "bleu", "smooth_method": "magic"}}, "x")
