"""The plugin's own tests: the criterion works, and metagen finds it once installed."""

import pytest

from @module@ import StopOnToken, vllm_request


def test_stops_only_the_rows_that_generated_the_token():
    torch = pytest.importorskip("torch")  # stopping criteria run where transformers runs, with torch
    input_ids = torch.tensor([[5, 7, 2], [5, 2, 7]])
    assert StopOnToken(token_id=2)(input_ids, None).tolist() == [True, False]


def test_rejects_a_negative_token_id():
    with pytest.raises(ValueError, match="token_id"):
        StopOnToken(token_id=-1)


def test_realised_on_vllm_as_stop_token_ids():
    assert vllm_request(2) == {"stop_token_ids": [2]}


def test_metagen_finds_the_criterion_and_builds_it():
    metagen_plugins = pytest.importorskip("metagen_plugins")
    found = metagen_plugins.components("stopping_criteria")["@name@"]
    assert found["distribution"] == "@dist@" and "vllm" in found["hosts"]
    pytest.importorskip("transformers")  # generate_kwargs is for the transformers host
    kwargs = metagen_plugins.generate_kwargs({"stopping": [{"name": "@name@", "token_id": 2}]})
    assert any(isinstance(c, StopOnToken) for c in kwargs["stopping_criteria"])
