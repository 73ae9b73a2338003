"""An outside plugin implementing all four hooks, installed as a distribution and used end to end."""

import torch

import metagen_plugins

PLUGIN = '''
import torch
from metagen_hooks import Result, hookimpl


class BanToken:
    """Never sample ``token_id``."""
    def __init__(self, token_id: int):
        self.token_id = token_id
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_id] = -float("inf")
        return scores


class StopAfter:
    """Stop each row after ``count`` new tokens."""
    def __init__(self, count: int):
        self.count, self.start = count, None
    def __call__(self, input_ids, scores, **kwargs):
        if self.start is None:
            self.start = input_ids.shape[1] - 1
        done = input_ids.shape[1] - self.start >= self.count
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


class CountChar:
    """Score a candidate by how often ``char`` occurs in it."""
    def __init__(self, char: str = "a"):
        self.char = char
    def score(self, prompt, candidates):
        return [float(c.text.count(self.char)) for c in candidates]


class BestOf:
    """Sample ``n`` and keep the highest-scoring."""
    def __init__(self, n: int = 4):
        self.n = n
    def run(self, prompt, generator, scorer, budget):
        [cands] = generator.sample([prompt], self.n)
        scores = scorer.score(prompt, cands)
        budget.charge(scorer_calls=len(cands))
        best = max(range(len(cands)), key=scores.__getitem__)
        return Result(prompt=prompt, best=cands[best], candidates=cands, scores=scores, budget=budget)


@hookimpl
def register_logits_processors(register):
    register("ban_token", BanToken)


@hookimpl
def register_stopping_criteria(register):
    register("stop_after", StopAfter)


@hookimpl
def register_scorers(register):
    register("count_char", CountChar)


@hookimpl
def register_strategies(register):
    register("best_of", BestOf)
'''


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
