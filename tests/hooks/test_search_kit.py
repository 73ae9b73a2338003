"""The public step-search kit (metagen_hooks.search) on its own, with the model-free
ScriptedGenerator: its helpers, the beam loop and its prune hook, the tree node; and metagen's
built-in step searches are built on it (the old private names still import)."""

import math

import pytest

import metagen_hooks
from metagen_hooks import Budget, BudgetExceeded, Candidate
from metagen_hooks.search import (AGGREGATES, BeamSearch, StepSearch, TreeNode, apportion, finished, root,
                                  softmax, steps)
from metagen_hooks.testing import ScriptedGenerator


def test_the_kit_is_exported_from_the_contract():
    assert metagen_hooks.StepSearch is StepSearch and metagen_hooks.BeamSearch is BeamSearch
    assert metagen_hooks.TreeNode is TreeNode
    assert {"StepSearch", "BeamSearch", "TreeNode"} <= set(metagen_hooks.__all__)
    assert AGGREGATES == ("last", "min", "prod")


def test_helpers():
    assert root("Q?") == Candidate(prompt="Q?", text="", finish_reason="stop")
    assert not finished(root("Q?"), ". ")
    assert not finished(Candidate(prompt="", text="1+1=2. "), ". ")
    assert finished(Candidate(prompt="", text="1+1=2. #### 2"), ". ")
    assert steps("a. b. c", ". ") == ["a. ", "b. ", "c"] and steps("a. b. ", ". ") == ["a. ", "b. "]
    assert steps("", ". ") == []
    assert softmax([]) == [] and softmax([1000.0, 1000.0]) == [0.5, 0.5]
    assert softmax([0.0, math.log(3)]) == pytest.approx([0.25, 0.75])
    assert apportion(5, [0.5, 0.3, 0.2]) == [3, 1, 1]
    assert apportion(4, [0.34, 0.33, 0.33]) == [2, 1, 1] and sum(apportion(7, softmax([1, 2, 3]))) == 7


@pytest.mark.parametrize("kwargs, message", [
    ({"max_steps": 0}, "max_steps and step_tokens must be >= 1"),
    ({"step_tokens": 0}, "max_steps and step_tokens must be >= 1"),
    ({"delimiter": ""}, "delimiter must be a non-empty string"),
    ({"aggregate": "mean"}, "aggregate must be one of last, min, prod, got 'mean'"),
])
def test_step_search_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepSearch(**kwargs)


def test_beam_search_rejects_a_zero_width():
    with pytest.raises(ValueError, match="beam_width and expansions must be >= 1"):
        BeamSearch(beam_width=0)


# Each partial solution's next steps, and a reward per step: "a" leads, but its line ends wrong.
NEXT = {"": ["a. ", "b. ", "c. ", "d. "], "a. ": ["p. ", "q. "], "b. ": ["r. ", "s. "]}
REWARD = {"a. ": 0.9, "b. ": 0.6, "c. ": 0.5, "d. ": 0.4, "p. ": 0.95, "q. ": 0.9, "r. ": 0.7,
          "s. ": 0.5, "#### 5": 0.1, "#### 7": 0.9}


def next_step(prompt, prefix, i):
    if prefix in NEXT:
        return NEXT[prefix][i % len(NEXT[prefix])] + "then more words"  # the stop string cuts these
    return "#### 7" if prefix.startswith("b. ") else "#### 5"


class StepReward:
    def score_steps(self, prompt, candidates):
        return [[REWARD[s] for s in steps(c.text, ". ")] for c in candidates]


def test_scripted_generator_cuts_at_a_stop_string_as_a_serving_engine_does():
    gen = ScriptedGenerator(["x=4. y=5. #### 9", "x=4. ", "so it is #### 7 ok"])
    a, b, c = gen.sample(["q"], 3, stop=[". "])[0]
    assert a.text == "x=4. " and a.finish_reason == "stop" and len(a.token_ids) == 2  # "x=4." and " "
    assert b.text == "x=4. "  # trailing whitespace is a token of its own
    assert c.text == "so it is #### 7 ok" and len(c.token_ids) == 6
    [[d]] = gen.extend([Candidate(prompt="q", text="x=4. ")], 1, stop=["####"])
    assert d.text == "x=4. x=4. y=5. ####"  # stop strings are looked for in the new text only
    [[e]] = gen.sample(["q"], 1, max_new_tokens=2)
    assert e.text == "x=4. " and e.finish_reason == "length"


def test_beam_search_on_a_scripted_generator():
    gen = ScriptedGenerator(next_step)
    result = BeamSearch(beam_width=2, expansions=2, max_steps=3).run("Q?", gen, StepReward(), gen.budget)
    # a's two children outscore b's at depth 1, so the beam follows a's line and ends wrong
    assert [c.text for c in result.candidates] == ["a. p. #### 5", "a. p. #### 5"]
    assert result.scores == [0.1, 0.1] and result.strategy == "beam_search"
    assert gen.calls == [("extend", ["Q?"], 4), ("extend", ["Q?", "Q?"], 2), ("extend", ["Q?", "Q?"], 2)]
    depths = [e["depth"] for e in result.trace if e["event"] == "step_scores"]
    assert depths == [0, 1, 2] and result.trace[-1] == {"event": "select", "index": 0,
                                                          "rule": "highest process reward"}
    assert gen.budget.samples == 12 and gen.budget.scorer_calls == 12


def test_prune_decides_what_stays():
    seen = []

    class KeepOneLinePerParent(BeamSearch):
        name = "one_per_parent"

        def prune(self, pool, width, depth):
            seen.append((depth, [(c.text, s) for c, s in pool]))
            best, parents = [], set()
            for c, s in sorted(pool, key=lambda pair: -pair[1]):
                parent = "".join(self.steps(c)[:-1])
                if parent not in parents or depth == 0:
                    parents.add(parent)
                    best.append((c, s))
            return best[:width]

    gen = ScriptedGenerator(next_step)
    result = KeepOneLinePerParent(beam_width=2, expansions=2).run("Q?", gen, StepReward(), gen.budget)
    assert result.best.text == "b. r. #### 7" and result.strategy == "one_per_parent"
    assert seen[1] == (1, [("a. p. ", 0.95), ("a. q. ", 0.9), ("b. r. ", 0.7), ("b. s. ", 0.5)])


def test_beam_search_stops_when_the_budget_is_spent():
    gen = ScriptedGenerator(next_step, Budget(max_samples=7))
    result = BeamSearch(beam_width=2, expansions=2).run("Q?", gen, StepReward(), gen.budget)
    # 4 first steps, then 2 + 1 (the second prefix gets what is left), then nothing
    assert gen.budget.samples == 7 and "stopped" in result.trace[-1]
    assert [len(e["scores"]) for e in result.trace if e["event"] == "step_scores"] == [4, 3]
    assert [c.text for c in result.candidates] == ["a. p. ", "a. q. "]  # the beam it had


def test_scripted_generator_keeps_one_calls_prefixes_within_the_budget():
    prefixes = [Candidate(prompt="Q?", text="a. "), Candidate(prompt="Q?", text="b. ")]
    gen = ScriptedGenerator(next_step, Budget(max_samples=3))
    assert [len(g) for g in gen.extend(prefixes, 2, stop=[". "])] == [2, 1] and gen.budget.samples == 3
    gen = ScriptedGenerator(["one two three four"], Budget(max_tokens=5))
    assert [len(c.token_ids) for c in gen.sample(["p"], 2)[0]] == [2, 2] and gen.budget.tokens_generated == 4
    with pytest.raises(BudgetExceeded):
        ScriptedGenerator(next_step, Budget(max_samples=1)).extend(prefixes, 1)


def test_tree_node():
    tree = TreeNode(root("Q?"))
    a = tree.add(Candidate(prompt="Q?", text="a. "), 0.5)
    b = tree.add(Candidate(prompt="Q?", text="b. "), 0.2)
    aa = a.add(Candidate(prompt="Q?", text="a. c. "), 1.0)
    assert b.uct(1.0) == math.inf  # unvisited first
    aa.backup(1.0)
    b.backup(0.2)
    assert (tree.visits, tree.value, a.visits, a.value, aa.visits) == (2, 1.2, 1, 1.0, 1)
    assert a.uct(0.0) == 1.0 and a.uct(1.0) == pytest.approx(1.0 + math.sqrt(math.log(3)))
    assert [n.candidate.text for n in tree.walk()] == ["", "a. ", "a. c. ", "b. "]
    assert aa.parent is a and tree.children == [a, b]


def test_the_builtin_searches_are_built_on_the_kit():
    from metagen_plugins.builtin.strategies import adaptive, search

    assert issubclass(search.StepBeamSearch, BeamSearch) and issubclass(search.DVTS, BeamSearch)
    for cls in (search.Rebase, search.ParticleFiltering, search.MCTS):
        assert issubclass(cls, StepSearch)
    # MOVED: the old private names still import from their old module
    from metagen_plugins.builtin.search import _Node, _StepSearch, _all_nodes, _apportion, _root, _softmax

    assert (_StepSearch, _root, _softmax, _apportion, _Node) == (StepSearch, root, softmax, apportion, TreeNode)
    assert _all_nodes(TreeNode(root("p"))) and adaptive._done is finished
