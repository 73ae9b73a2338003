"""The plugin's own tests: the processor works, and metagen finds it once installed."""

import pytest

from @module@ import TokenPenalty, vllm_request


def test_penalises_only_the_listed_tokens():
    torch = pytest.importorskip("torch")  # processors run where transformers runs, with torch
    scores = torch.zeros(2, 5)
    out = TokenPenalty(token_ids=[1, 3], penalty=2.0)(torch.tensor([[0], [4]]), scores)
    assert out.tolist() == [[0.0, -2.0, 0.0, -2.0, 0.0]] * 2
    assert scores.abs().sum().item() == 0.0  # the caller's scores are untouched


def test_rejects_bad_parameters_and_tokens_outside_the_vocabulary():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="token_ids"):
        TokenPenalty(token_ids=[])
    with pytest.raises(ValueError, match="penalty"):
        TokenPenalty(token_ids=[1], penalty=-1.0)
    with pytest.raises(ValueError, match="outside this model's vocabulary"):
        TokenPenalty(token_ids=[7])(torch.tensor([[0]]), torch.zeros(1, 5))


def test_realised_on_vllm_as_a_logit_bias():
    assert vllm_request([1, 3], 2.0) == {"logit_bias": {"1": -2.0, "3": -2.0}}


def test_metagen_finds_the_processor_and_builds_it():
    metagen_plugins = pytest.importorskip("metagen_plugins")
    found = metagen_plugins.components("logits_processors")["@name@"]
    assert found["distribution"] == "@dist@" and "vllm" in found["hosts"]
    pytest.importorskip("transformers")  # generate_kwargs is for the transformers host
    kwargs = metagen_plugins.generate_kwargs({"processors": [{"name": "@name@", "token_ids": [1]}]})
    assert any(isinstance(p, TokenPenalty) or isinstance(getattr(p, "processor", None), TokenPenalty)
               for p in kwargs["logits_processor"])
