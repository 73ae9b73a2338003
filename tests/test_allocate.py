"""One budget across a dataset (metagen_plugins.allocate): every prompt a first round, the rest
where the answer is in doubt, the total never exceeded, a failing prompt failing alone."""

from __future__ import annotations

import pytest

import metagen_plugins
from metagen_plugins.errors import ConfigError
from tests.plugins import plugins_dir

PROMPTS = ["easy 1", "split 1", "easy 2", "split 2", "easy 3"]


def config(strategy="self_consistency", **params):
    return {"host": {"name": "scripted"}, "strategy": {"name": strategy, "n": 8, **params}}


@pytest.fixture
def reg(tmp_path, registry):
    return registry(plugins_dir=plugins_dir(tmp_path, "scripted_host"))


def test_doubtful_prompts_get_the_budget_and_the_total_holds(reg):
    """Each sample is 6 words (tokens). 5 prompts x a first round of 2 = 60 tokens; of the 90
    left, most go to the split prompts (their vote is in doubt: 1-1, 2-2, ...), less to the ones
    whose samples agree."""
    results = metagen_plugins.run(config(), PROMPTS, total_tokens=150, registry=reg)
    spent = sum(r.budget.tokens_generated for r in results)
    assert 144 <= spent <= 150
    samples = {r.prompt: len(r.candidates) for r in results}
    assert sum(samples.values()) * 6 == spent
    assert min(samples["split 1"], samples["split 2"]) > max(samples[p] for p in PROMPTS if p.startswith("easy"))
    assert all(r.best.text.endswith("#### 7 ok") for r in results if r.prompt.startswith("easy"))
    select = results[1].trace[-1]
    assert select["event"] == "select" and select["allocated"] and select["samples"] == samples["split 1"]


def test_a_budget_smaller_than_the_first_round_is_never_exceeded(reg):
    results = metagen_plugins.run(config(), PROMPTS, total_tokens=23, registry=reg)
    assert sum(r.budget.tokens_generated for r in results) <= 23


def test_no_prompt_goes_past_its_cap_and_settled_ones_stop(reg):
    results = metagen_plugins.run(config(), PROMPTS, total_tokens=10_000, registry=reg)
    samples = {r.prompt: len(r.candidates) for r in results}
    assert samples["split 1"] == samples["split 2"] == 32  # 4 x n: a 16-16 vote never settles
    assert all(samples[p] < 16 for p in PROMPTS if p.startswith("easy"))  # unanimous: settled early


def test_best_of_n_allocates_by_the_verifiers_doubt(reg):
    """A verifier sure of answer 7 (0.9) and of nothing else (0.2): best-of-N's doubt (one minus
    the best score) sends the samples to the split prompts."""
    cfg = {**config("best_of_n"), "scorer": {"name": "likes_seven"}}
    results = metagen_plugins.run(cfg, PROMPTS, total_tokens=200, registry=reg)
    samples = {r.prompt: len(r.candidates) for r in results}
    assert sum(samples.values()) == 33  # 200 tokens, 6 a sample
    assert min(samples["split 1"], samples["split 2"]) >= 10
    assert max(samples[p] for p in PROMPTS if p.startswith("easy")) <= 3
    assert all(r.scores and len(r.scores) == len(r.candidates) for r in results)


def test_a_strategy_that_is_not_a_choice_among_samples_is_refused_with_the_ones_that_are(reg):
    with pytest.raises(ConfigError, match=r"strategy 'step_beam_search' cannot share a dataset budget.*"
                                          r"best_of_n, calculator_vote, self_consistency, weighted_majority"):
        metagen_plugins.run(config("step_beam_search", n=None) | {"strategy": {"name": "step_beam_search"}},
                            PROMPTS, total_tokens=100, registry=reg)


def test_a_failing_prompt_fails_alone(reg):
    results = metagen_plugins.run(config(), ["easy 1", "broken 1", "split 1"], total_tokens=200, registry=reg)
    assert results[1].best is None and "the scripted model broke" in results[1].failures[0]["message"]
    assert results[0].best.text.endswith("#### 7 ok") and results[2].best is not None
