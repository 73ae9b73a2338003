"""The built-in scorers and strategies declare truthfully whether they read the samples'
log-probabilities (``reads_logprobs=``): every one is declared, and each one declared not to
read them runs to its result on samples whose log-probabilities fail the test when read (a
candidate's, and an in-flight sample's while a watch looks at it). A remote host asks its server
for none on the strength of these declarations, so a false one would score or select on empty
lists there."""

from __future__ import annotations

import sys

import pytest

import metagen_plugins
from metagen_hooks import Budget, Candidate
from metagen_hooks.testing import ScriptedGenerator
from tests.builtin.test_model_scorers import classifier_dir  # noqa: F401 (a fixture, reused)
from tests.builtin.test_served_scorers import FakeClassify, served
from tests.builtin.test_strategies import SCORERS, STRATEGIES

PROMPT = "Q: 3+4-2=? A:"
ANSWERS = [" 3+4=7. 7-2=5. #### 5", " 3+4=7. 7-2=6. #### 6", " 3+4=7. 7-2=5. #### 5"]


class Unread(list):
    """Log-probabilities that fail the test when read (iterated, measured, indexed, copied); they
    compare as the empty list a host that was not asked for them leaves. Recording a candidate in
    the trace (``Candidate.to_dict``) copies them without reading them: it sees that empty list."""

    def _read(self, *args, **kwargs):
        raise AssertionError("read the samples' log-probabilities, though declared reads_logprobs=False")

    def __iter__(self):
        if sys._getframe(1).f_code.co_name == "_asdict_inner":  # dataclasses.asdict: the trace's record
            return iter(())
        self._read()

    __len__ = __getitem__ = __bool__ = __contains__ = __reversed__ = _read
    __add__ = __radd__ = __mul__ = copy = index = count = _read

    def __eq__(self, other):
        return isinstance(other, list) and list.__len__(other) == 0

    def __ne__(self, other):
        return not self == other

    __hash__ = None


class UnreadGenerator(ScriptedGenerator):
    """A ScriptedGenerator whose candidates' log-probabilities are :class:`Unread`, and whose
    in-flight samples' are while the strategy's watch looks at them."""

    def _run(self, jobs, n, max_new_tokens, stop, watch):
        if watch is not None:
            callback = watch.callback

            def unread(views):
                kept = [v.logprobs for v in views]
                for v in views:
                    v.logprobs = Unread()
                try:
                    callback(views)
                finally:
                    for v, logprobs in zip(views, kept):
                        v.logprobs = logprobs

            watch = type(watch)(unread, top_logprobs=watch.top_logprobs)
        groups = super()._run(jobs, n, max_new_tokens, stop, watch)
        for group in groups:
            for c in group:
                c.logprobs = Unread()
        return groups


CANDIDATES = [Candidate(PROMPT, text, token_ids=[1, 2], logprobs=Unread()) for text in ANSWERS]
PARAMS = {"code_tests": {"tests": ["assert True"], "isolation": "limits"}}


def declared(kind: str) -> dict[str, object]:
    return {name: info.reads_logprobs for name, info in metagen_plugins.get_registry().components[kind].items()
            if info.plugin == "metagen_plugins.builtin"}


def test_the_unread_log_probabilities_fail_when_read():
    c = Candidate(PROMPT, " #### 5", logprobs=Unread())
    for read in (lambda: sum(c.logprobs), lambda: len(c.logprobs), lambda: list(c.logprobs), lambda: c.logprobs[0],
                 lambda: bool(c.logprobs)):
        with pytest.raises(AssertionError, match="read the samples' log-probabilities"):
            read()
    assert c == Candidate(PROMPT, " #### 5")  # compares as a candidate without them


@pytest.mark.parametrize("kind", ["scorers", "strategies"])
def test_every_built_in_declares(kind):
    assert [name for name, value in declared(kind).items() if value is None] == []


def test_the_ones_declared_to_read_them_are_the_ones_that_do():
    reading = {kind: sorted(n for n, v in declared(kind).items() if v is True) for kind in ("scorers", "strategies")}
    assert reading == {"scorers": ["logprob"], "strategies": ["deepconf"]}
    registry = metagen_plugins.get_registry()
    with pytest.raises(AssertionError, match="read the samples' log-probabilities"):  # the tests below would see it
        metagen_plugins.build(registry.get("scorers", "logprob"), {}).score(PROMPT, CANDIDATES)
    run_unread("deepconf")  # on a host giving top log-probabilities it reads those...
    with pytest.raises(AssertionError, match="read the samples' log-probabilities"):
        run_unread("deepconf", watches=False)  # ...and where none come, the tokens' own


def run_unread(name: str, watches: bool = True):
    registry = metagen_plugins.get_registry()
    strategy = metagen_plugins.build(registry.get("strategies", name), STRATEGIES[name])
    scorer_name = SCORERS.get(name, "step_checker")
    scorer = metagen_plugins.build(registry.get("scorers", scorer_name), {})
    generator = UnreadGenerator(lambda prompt, prefix, i: ANSWERS[i % len(ANSWERS)], Budget(max_samples=64))
    generator.watches = watches  # False: a host that cannot watch (the kit shows the finished samples)
    return strategy.run(PROMPT, generator, scorer, generator.budget)


@pytest.mark.parametrize("name", sorted(n for n, v in declared("strategies").items() if v is not True))
def test_a_strategy_declared_not_to_read_them_runs_without_them(name):
    registry = metagen_plugins.get_registry()
    if callable(declared("strategies")[name]):  # compose, chain: what their strategies read
        assert registry.reads_logprobs("strategies", {"name": name, **STRATEGIES[name]}) is False
    result = run_unread(name)
    assert result.candidates or result.best is None




@pytest.mark.parametrize("name", sorted(n for n, v in declared("scorers").items() if v is False
                                        and n not in ("outcome_reward_model", "process_reward_model", "llm_judge",
                                                      "step_likelihood", "served_outcome_reward_model",
                                                      "served_process_reward_model")))
def test_a_scorer_declared_not_to_read_them_scores_without_them(name):
    registry = metagen_plugins.get_registry()
    scorer = metagen_plugins.build(registry.get("scorers", name), PARAMS.get(name, {}))
    if hasattr(scorer, "score"):
        assert len(scorer.score(PROMPT, CANDIDATES)) == len(CANDIDATES)
    else:  # a pairwise utility
        assert isinstance(scorer.utility(CANDIDATES[0].text, CANDIDATES[1].text), float)


def test_the_model_scorers_score_without_them(tiny, tiny_dir):
    model, tok = tiny
    registry = metagen_plugins.get_registry()
    for name, params in (("llm_judge", {"yes": "y", "no": "n"}), ("step_likelihood", {"path": str(tiny_dir)})):
        scorer = metagen_plugins.build(registry.get("scorers", name), params, {"model": model, "tokenizer": tok})
        assert len(scorer.score(PROMPT, CANDIDATES)) == len(CANDIDATES)


def test_the_reward_models_score_without_them(classifier_dir):
    registry = metagen_plugins.get_registry()
    for name in ("outcome_reward_model", "process_reward_model"):
        scorer = metagen_plugins.build(registry.get("scorers", name), {"path": str(classifier_dir)})
        assert len(scorer.score(PROMPT, CANDIDATES)) == len(CANDIDATES)


def test_the_served_reward_models_score_without_them():
    for name in ("served_outcome_reward_model", "served_process_reward_model"):
        scorer = served({"name": name, "url": "http://vllm:8000", "served_model": "prm"}, FakeClassify())
        try:
            assert len(scorer.score(PROMPT, CANDIDATES)) == len(CANDIDATES)
        finally:
            scorer.close()



def test_the_logprob_scorer_refuses_candidates_that_came_without_log_probabilities():
    """A candidate with text but no log-probs (a run that did not ask for them) is an error that
    says how to get them, never a score of 0; an empty candidate still scores 0."""
    from metagen_plugins.builtin.scorers.logprob import LogProb

    scorer = LogProb()
    with pytest.raises(ValueError, match=r"scorer 'logprob': candidate 1 .*\[host\] logprobs = true"):
        scorer.score("q", [Candidate(prompt="q", text="a", token_ids=[5], logprobs=[-1.0]),
                           Candidate(prompt="q", text="b", token_ids=[6], logprobs=[])])
    assert scorer.score("q", [Candidate(prompt="q", text="", token_ids=[], logprobs=[])]) == [0.0]
