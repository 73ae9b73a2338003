"""Every strategy end to end on a tiny model (mechanics, budgets, traces, reproducibility),
and the selection rules on their own."""

from collections import Counter

import pytest

import metagen_plugins
from metagen_hooks import Candidate
from metagen_hooks import selection

# A random model forced into the demo task's format, so step-level searches have steps to score.
FORMAT = r" (\d{1,2}[+-]\d{1,2}=\d{1,3}\. ){1,3}#### \d{1,3}"
PROMPT = "Q: 3+4-2=? A:"

STRATEGIES = {
    "generate": {},
    "parallel": {"n": 4},
    "best_of_n": {"n": 4},
    "rejection": {"batch": 2, "max_samples": 6, "threshold": 0.5},
    "self_consistency": {"n": 5},
    "weighted_majority": {"n": 4},
    "mbr": {"n": 4},
    "adaptive_self_consistency": {"batch": 2, "max_samples": 6},
    "esc": {"n": 6, "window": 2},
    "deepconf": {"n": 6, "warmup": 2, "group": 4, "batch": 2},
    "early_rejection": {"n": 3, "max_steps": 4, "step_tokens": 12, "threshold": 0.5},
    "step_beam_search": {"beam_width": 2, "expansions": 2, "max_steps": 4, "step_tokens": 12},
    "dvts": {"n": 4, "expansions": 2, "max_steps": 4, "step_tokens": 12},
    "rebase": {"n": 4, "max_steps": 4, "step_tokens": 12},
    "particle_filtering": {"n": 3, "max_steps": 4, "step_tokens": 12},
    "mcts": {"iterations": 8, "expansions": 2, "max_steps": 4, "step_tokens": 12},
    "self_repair": {"rounds": 2},
    "self_refine": {"rounds": 1},
    "compose": {"inner": {"name": "best_of_n", "n": 2}, "outer": {"name": "self_consistency", "n": 3}},
    "chain": {"stages": [{"template": "{prompt}"}, {"template": "{prompt}{previous}"}]},
    "calculator_vote": {"n": 3},
    "program_aided": {"n": 2, "isolation": "limits", "template": "{prompt}"},
}


SCORERS = {"mbr": "edit_similarity"}  # MBR needs a pairwise utility; the others a verifier


def config(name, params, **extra):
    return {"processors": [{"name": "grammar", "regex": FORMAT}],
            "generation": {"do_sample": True, "seed": 0, "max_new_tokens": 40},
            "strategy": {"name": name, **params},
            "scorer": {"name": SCORERS.get(name, "step_checker")}, **extra}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_runs_and_records_its_trace(tiny, name):
    model, tok = tiny
    result = metagen_plugins.run(config(name, STRATEGIES[name]), PROMPT, model=model, tokenizer=tok)
    assert result.best is not None and result.best in result.candidates
    assert "####" in result.best.text
    assert result.budget.tokens_generated > 0 and result.budget.forward_passes > 0
    events = Counter(e["event"] for e in result.trace)
    assert events["candidate"] + events["inner_run"] + events["stage"] >= 1
    if name not in ("compose", "chain"):
        assert events["select"] == 1
    if result.scores:
        assert len(result.scores) == len(result.candidates)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_is_reproducible(tiny, name):
    model, tok = tiny
    a = metagen_plugins.run(config(name, STRATEGIES[name]), PROMPT, model=model, tokenizer=tok)
    b = metagen_plugins.run(config(name, STRATEGIES[name]), PROMPT, model=model, tokenizer=tok)
    assert a.best.text == b.best.text
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
    assert a.trace == b.trace


@pytest.mark.parametrize("name", ["best_of_n", "self_consistency", "step_beam_search", "rebase", "mcts",
                                  "particle_filtering", "adaptive_self_consistency", "rejection"])
@pytest.mark.parametrize("limit", [{"max_tokens": 50}, {"max_samples": 3}])
def test_budget_limits_are_never_exceeded(tiny, name, limit):
    model, tok = tiny
    params = dict(STRATEGIES[name])
    params.update({k: 8 for k in ("n", "max_samples") if k in params})
    result = metagen_plugins.run(config(name, params, budget=limit), PROMPT, model=model, tokenizer=tok)
    if "max_tokens" in limit:
        assert result.budget.tokens_generated <= 50
    else:
        assert result.budget.samples <= 3
    assert result.best is not None  # what was generated within the limit is still selected from


def test_mbr_needs_a_pairwise_utility(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="'mbr' needs a pairwise utility scorer"):
        metagen_plugins.run(config("mbr", {"n": 2}, scorer={"name": "step_checker"}), PROMPT,
                            model=model, tokenizer=tok)


def test_best_of_n_needs_a_scorer(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="needs a \\[scorer\\]"):
        metagen_plugins.run({"strategy": {"name": "best_of_n", "n": 2}, "generation": {"max_new_tokens": 4}},
                            "x", model=model, tokenizer=tok)


def test_nested_strategy_errors_name_the_field():
    with pytest.raises(metagen_plugins.ConfigError, match="compose inner: .*unknown strategy 'best_of_m'"):
        metagen_plugins.run({"strategy": {"name": "compose", "inner": {"name": "best_of_m"},
                                          "outer": {"name": "self_consistency"}}}, "x")


# -- selection rules ------------------------------------------------------------------------------

def c(text):
    return Candidate(prompt="p", text=text)


def test_majority_and_weighted_majority():
    cands = [c("#### 5"), c("#### 7"), c("no answer"), c("#### 7"), c("#### 5")]
    index, votes = selection.majority(cands)
    assert votes == {"5": 2.0, "7": 2.0} and index == 0  # tie: the answer reached first
    index, votes = selection.majority(cands, weights=[0.1, 0.9, 5.0, 0.8, 0.2])
    assert index == 1 and votes == pytest.approx({"5": 0.3, "7": 1.7})
    assert selection.majority([c("none")]) == (0, {})
    assert selection.majority([]) == (None, {})


def test_mbr_and_argmax():
    cands = [c("the cat"), c("the cat sat"), c("dog")]
    index, expected = selection.mbr(cands, lambda a, b: float(a.split()[0] == b.split()[0]))
    assert index == 0 and expected == [0.5, 0.5, 0.0]
    assert selection.argmax([0.1, 0.5, 0.5]) == 1 and selection.argmax([]) is None


def test_vote_settled_follows_the_beta_rule():
    assert not selection.vote_settled(Counter({"5": 2}), 0.95)  # P = 7/8
    assert selection.vote_settled(Counter({"5": 4}), 0.95)  # P = 31/32
    assert not selection.vote_settled(Counter({"5": 4, "7": 3}), 0.95)
    assert selection.vote_settled(Counter({"5": 9, "7": 1}), 0.95)
