"""The demo task, its exact checker, and the shipped demo models."""

import pytest

import metagen_plugins
from metagen_plugins.demo.task import (Problem, check_steps, extract_answer, is_correct, parse_question,
                                       problems, split_steps)
from metagen_plugins.demo.train import held_out


def test_problems_are_deterministic_distinct_and_exclude_held_out():
    evaluation = held_out()
    assert evaluation == held_out() and len({p.question for p in evaluation}) == len(evaluation)
    train = problems(500, seed=0, exclude={p.question for p in evaluation})
    assert not {p.question for p in train} & {p.question for p in evaluation}
    for p in train:
        assert 1 <= len(p.operators) <= 3 and all(1 <= x <= 99 for x in p.operands)
        assert is_correct(p.prompt, p.solution) and all(check_steps(p.prompt, p.solution))


def test_checker_judges_each_step():
    p = Problem((37, 48, 19), ("+", "-"))
    assert p.prompt == "Q: 37+48-19=? A:" and p.solution == " 37+48=85. 85-19=66. #### 66"
    assert parse_question(p.prompt) == p
    assert check_steps(p.prompt, " 37+48=85. 85-19=66. #### 66") == [True, True]
    assert check_steps(p.prompt, " 37+48=84. 84-19=65. #### 65") == [False, True]  # slip, then consistent
    assert check_steps(p.prompt, " 37+48=85. 85+19=104. #### 104") == [True, False]  # wrong operator
    assert check_steps(p.prompt, " 37+48=85. 85-19=66. 66+1=67. #### 67") == [True, True, False]
    assert split_steps(" 37+48=85. 85-19=66. #### 66") == ["37+48=85", "85-19=66"]
    assert extract_answer("... #### 66") == "66" and extract_answer("no answer") is None
    assert not is_correct(p.prompt, " 37+48=85. #### 85")


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metagen_plugins.models import resolve

    path = resolve("demo-arith")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def accuracy(config, items, demo):
    model, tok = demo
    results = metagen_plugins.run(config, [p.prompt for p in items], model=model, tokenizer=tok)
    return sum(bool(r.best) and is_correct(p.prompt, r.best.text) for p, r in zip(items, results)) / len(items)


def test_demo_model_has_headroom_that_verified_sampling_uses(demo):
    items = held_out()[:40]
    greedy = accuracy({"generation": {"max_new_tokens": 48}}, items, demo)
    sampled = {"processors": [{"name": "temperature", "temperature": 0.8}],
               "generation": {"max_new_tokens": 48, "seed": 0}}
    best_of_8 = accuracy({**sampled, "strategy": {"name": "best_of_n", "n": 8}, "scorer": {"name": "step_checker"}},
                         items, demo)
    assert 0.15 <= greedy <= 0.8
    assert best_of_8 > greedy


def test_demo_prm_separates_the_models_own_right_and_wrong_samples(demo):
    from metagen_plugins.demo.task import check_steps

    model, tok = demo
    registry = metagen_plugins.get_registry()
    prm = metagen_plugins.build(registry.get("scorers", "process_reward_model"), {"path": "demo-arith-prm"})
    items = held_out()[:40]
    results = metagen_plugins.run({"processors": [{"name": "temperature", "temperature": 0.8}],
                                   "generation": {"max_new_tokens": 48, "seed": 0},
                                   "strategy": {"name": "parallel", "n": 4}},
                                  [p.prompt for p in items], model=model, tokenizer=tok)
    right, wrong = [], []
    for p, r in zip(items, results):
        for c, score in zip(r.candidates, prm.score(p.prompt, r.candidates)):
            good = is_correct(p.prompt, c.text) and all(check_steps(p.prompt, c.text))
            (right if good else wrong).append(score)
    auc = sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / (len(right) * len(wrong))
    assert right and wrong and auc >= 0.75


def test_step_search_on_the_demo_model_stops_at_each_step(demo):
    """The demo tokenizer cannot spell transformers' stop-string probe text; steps still end
    at the delimiter (metagen's text criterion takes over)."""
    model, tok = demo
    p = held_out()[0]
    result = metagen_plugins.run({"processors": [{"name": "temperature", "temperature": 0.8}],
                                  "generation": {"seed": 0},
                                  "strategy": {"name": "step_beam_search", "beam_width": 2, "expansions": 2,
                                               "step_tokens": 16, "max_steps": 5},
                                  "scorer": {"name": "step_checker"}}, p.prompt, model=model, tokenizer=tok)
    steps = [e for e in result.trace if e["event"] == "candidate"]
    first = [e["candidate"]["text"] for e in steps if e["depth"] == 0]
    assert first and all(t.endswith(". ") and t.count(". ") == 1 for t in first)
    assert "####" in result.best.text


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="demo-arith-prm, the sequence classifier kept for reward-model plumbing, "
                   "selects against correctness (its scores ignore the digits; best-of-16 19.2% vs a random "
                   "sample 34.2% on held-out problems 80-199, within-problem AUC 0.51; docs/real-model.md); "
                   "the demo's verifier is demo-arith-verifier (the next test)")
def test_selection_by_the_shipped_prm_beats_a_random_sample(demo):
    """Best-of-8 with the shipped demo PRM must pick right answers more often than a sample
    drawn at random (the mean accuracy of the samples): a verifier that selects against
    correctness (as an earlier demo PRM did) fails here."""
    model, tok = demo
    items = held_out()[40:100]
    config = {"processors": [{"name": "temperature", "temperature": 0.8}],
              "generation": {"max_new_tokens": 48, "seed": 1},
              "strategy": {"name": "best_of_n", "n": 8},
              "scorer": {"name": "process_reward_model", "path": "demo-arith-prm"}}
    results = metagen_plugins.run(config, [p.prompt for p in items], model=model, tokenizer=tok)
    chosen = sum(is_correct(p.prompt, r.best.text) for p, r in zip(items, results)) / len(items)
    random_sample = sum(is_correct(p.prompt, c.text) for p, r in zip(items, results)
                        for c in r.candidates) / sum(len(r.candidates) for r in results)
    assert chosen > random_sample + 0.05


@pytest.mark.slow
def test_selection_by_the_shipped_verifier_beats_greedy_and_a_random_sample(demo):
    """Best-of-8 with the demo's verifier (step_likelihood over demo-arith-verifier) must pick
    right answers clearly more often than a sample drawn at random, and beat greedy decoding."""
    model, tok = demo
    items = held_out()[40:100]
    sampled = {"processors": [{"name": "temperature", "temperature": 0.8}],
               "generation": {"max_new_tokens": 48, "seed": 1}}
    config = {**sampled, "strategy": {"name": "best_of_n", "n": 8},
              "scorer": {"name": "step_likelihood", "path": "demo-arith-verifier"}}
    results = metagen_plugins.run(config, [p.prompt for p in items], model=model, tokenizer=tok)
    chosen = sum(is_correct(p.prompt, r.best.text) for p, r in zip(items, results)) / len(items)
    random_sample = sum(is_correct(p.prompt, c.text) for p, r in zip(items, results)
                        for c in r.candidates) / sum(len(r.candidates) for r in results)
    greedy = accuracy({"generation": {"max_new_tokens": 48}}, items, demo)
    assert chosen >= random_sample + 0.1 and chosen > greedy
