"""An outside plugin implementing all four hooks, installed as a distribution and used end to end."""

import torch

import metagen_plugins
from tests.plugins import source

PLUGIN = source("author")


def test_outside_plugin_runs_end_to_end(install_plugin, registry, tiny):
    install_plugin("metagen_author", PLUGIN, dist="metagen-author", version="0.3")
    registry()
    model, tok = tiny
    banned = tok.convert_tokens_to_ids("a")
    config = {
        "processors": [{"name": "ban_token", "token_id": banned}],
        "stopping": [{"name": "stop_after", "count": 6}],
        "generation": {"do_sample": True, "max_new_tokens": 30, "seed": 1},
        "strategy": {"name": "best_of", "n": 5},
        "scorer": {"name": "count_char", "char": "e"},
    }
    result = metagen_plugins.run(config, "hello", model=model, tokenizer=tok)
    assert len(result.candidates) == 5
    assert all(len(c.token_ids) <= 6 for c in result.candidates)
    assert all(banned not in c.token_ids for c in result.candidates)
    assert result.scores == [float(c.text.count("e")) for c in result.candidates]
    assert result.best.text.count("e") == max(result.scores)
    assert result.budget.scorer_calls == 5 and result.budget.samples == 5
    assert result.strategy == "best_of"
    info = metagen_plugins.components("strategies")["best_of"]
    assert (info["distribution"], info["version"]) == ("metagen-author", "0.3")


def test_outside_processor_in_plain_generate(install_plugin, registry, tiny):
    install_plugin("metagen_author", PLUGIN)
    registry()
    model, tok = tiny
    banned = tok.convert_tokens_to_ids("e")
    kwargs = metagen_plugins.generate_kwargs(
        {"processors": [{"name": "ban_token", "token_id": banned}], "generation": {"max_new_tokens": 40}})
    out = model.generate(**tok("eeee", return_tensors="pt"), **kwargs, pad_token_id=2)
    assert banned not in out[0, 4:].tolist()
    assert isinstance(out, torch.Tensor)
