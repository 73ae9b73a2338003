"""The batched runtime: many prompts' strategies at once on the transformers host, one decode
loop over every sequence in flight, results that do not depend on the company."""

from __future__ import annotations

import threading

import pytest
import torch

import metagen_plugins
from metagen_hooks import Budget, Candidate
from metagen_plugins.errors import ConfigError, HostError
from metagen_plugins.engines.transformers.host import TransformersHost
from fixture_plugins import plugins_dir

PROMPTS = ["the quick brown fox", "jumps over the lazy dog and then some more words",
           "a", "lorem ipsum dolor sit amet, consectetur adipiscing elit", "hello hello hello"]


def host(tiny, config=None) -> TransformersHost:
    model, tok = tiny
    registry = metagen_plugins.get_registry()
    return TransformersHost(metagen_plugins.validate(config or {}, registry), registry, model=model, tokenizer=tok)


@pytest.mark.parametrize("kv_heads,shared", [(4, True), (1, True), (2, False)])
def test_prefixes_of_different_lengths_in_one_batch_equal_generate_per_prompt(kv_heads, shared):
    """Greedy continuations of five prompts of different lengths (one of a single token: no
    prefix at all), decoded in one batch from concurrent threads, equal generate() on each prompt
    alone, and so do their log-probs: with several rows per prefix (the shared-prefix split) and
    with one row each (one fused attention)."""
    from metagen_plugins.testing import tiny_model, tiny_tokenizer

    model, tok = tiny_model(vocab_size=63, heads=4, kv_heads=kv_heads, seed=5), tiny_tokenizer()
    h = host((model, tok))
    out: dict[int, list] = {}

    def one(i):
        out[i] = h.generator(Budget()).sample([PROMPTS[i]], n=1 + i % 3 if shared else 1, max_new_tokens=9)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h.close()
    assert h.prefix_cache.entries  # what was decoded stays reusable
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt").input_ids
        ref = model.generate(ids, max_new_tokens=9, do_sample=False, pad_token_id=2, return_dict_in_generate=True,
                             output_logits=True)
        tokens = ref.sequences[0, ids.shape[1]:].tolist()
        logprobs = torch.stack(ref.logits, 1)[0].log_softmax(-1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
        for candidate in out[i]:
            assert candidate.token_ids == tokens[:len(candidate.token_ids)], prompt
            assert candidate.logprobs == pytest.approx(logprobs[:len(candidate.token_ids)].tolist(), abs=1e-4)


def test_run_results_do_not_depend_on_concurrency_or_prompt_order(tiny):
    """Seeded sampling strategies: the same prompt gets the same candidates whether prompts run
    one at a time or all at once, and whatever their order."""
    model, tok = tiny
    config = {"processors": [{"name": "temperature", "temperature": 1.1}],
              "generation": {"seed": 7, "max_new_tokens": 8},
              "strategy": {"name": "step_beam_search", "beam_width": 2, "expansions": 2, "max_steps": 2,
                           "step_tokens": 4, "delimiter": " "},
              "scorer": {"name": "logprob"}}

    def texts(results):
        return {r.prompt: [c.text for c in r.candidates] for r in results}

    alone = texts(metagen_plugins.run(config, PROMPTS, model=model, tokenizer=tok, concurrency=1))
    together = texts(metagen_plugins.run(config, PROMPTS, model=model, tokenizer=tok, concurrency=8))
    reversed_order = texts(metagen_plugins.run(config, PROMPTS[::-1], model=model, tokenizer=tok, concurrency=3))
    assert alone == together == reversed_order
    assert len({t for texts_ in alone.values() for t in texts_}) > len(PROMPTS)  # it really sampled


def test_results_come_back_in_input_order_and_a_failing_prompt_fails_alone(tiny):
    model, tok = tiny
    prompts = ["short", "x " * 1100, "another short one"]  # the middle one overflows the context
    seen = []
    results = metagen_plugins.run({"generation": {"max_new_tokens": 4}}, prompts, model=model, tokenizer=tok,
                                  concurrency=3, on_result=seen.append)
    assert [r.prompt for r in results] == prompts
    assert sorted(r.prompt for r in seen) == sorted(prompts)  # each reported once, as it finished
    assert metagen_plugins.failed(results[1]) and "context" in results[1].failures[0]["message"]
    assert results[0].best is not None and results[2].best is not None


def test_a_component_that_raises_fails_its_prompt_alone_while_others_share_the_batch(tiny, tmp_path):
    """A processor raising in the decode loop fails the request it belongs to; the other prompts,
    decoded in the same forward passes, finish."""
    from metagen_plugins.registry import Registry
    from metagen_plugins.plugins import PluginManager

    registry = Registry(PluginManager().load(plugins_dir(tmp_path, "flaky")))
    model, tok = tiny
    config = {"processors": [{"name": "flaky"}], "generation": {"max_new_tokens": 6},
              "strategy": {"name": "best_of_n", "n": 2}, "scorer": {"name": "logprob"}}
    runner = metagen_plugins.Runner(config, model=model, tokenizer=tok, concurrency=4, registry=registry)
    odd = runner.submit("one", config=metagen_plugins.validate(
        {**config, "strategy": {"name": "best_of_n", "n": 3}}, registry))
    fine = [runner.submit(p) for p in PROMPTS[:3]]
    runner.close()
    failure = odd.result().failures[0]
    assert failure["kind"] == "component" and "flaky" in failure["component"]
    assert all(f.result().best is not None and not f.result().failures for f in fine)


def test_max_batch_tokens_bounds_a_request_with_a_clear_error(tiny):
    h = host(tiny, {"host": {"max_batch_tokens": 64}})
    with pytest.raises(HostError, match=r"max_batch_tokens = 64.*raise max_batch_tokens"):
        h.generator(Budget()).sample(["the quick brown fox"], n=8, max_new_tokens=16)
    h.close()


def test_requests_beyond_max_batch_tokens_wait_their_turn(tiny):
    """Back-pressure: with room for about one request, eight concurrent prompts all finish, with
    the same greedy output as with room for all."""
    model, tok = tiny
    small = metagen_plugins.run({"host": {"max_batch_tokens": 200}, "generation": {"max_new_tokens": 12}},
                                PROMPTS, model=model, tokenizer=tok, concurrency=8)
    large = metagen_plugins.run({"generation": {"max_new_tokens": 12}}, PROMPTS, model=model, tokenizer=tok,
                                concurrency=8)
    assert [r.best.text for r in small] == [r.best.text for r in large]


def test_concurrency_setting_is_validated():
    with pytest.raises(ConfigError, match=r"\[run\] concurrency must be >= 1"):
        metagen_plugins.validate({"run": {"concurrency": 0}}, metagen_plugins.get_registry())
    with pytest.raises(ConfigError, match="concurrency must be an int >= 1"):
        metagen_plugins.run({}, ["x"], concurrency=0)


# -- scorers in batches ------------------------------------------------------------------------

def test_concurrent_calls_share_runs_and_each_gets_its_own_results():
    """Gathered: while one run of the function is busy, calls queue and the next run takes them
    all; every caller gets exactly its items' results, in order."""
    from metagen_plugins.builtin.scorers.gather import Gathered

    started, release, runs = threading.Event(), threading.Event(), []

    def fn(items):
        runs.append(list(items))
        started.set()
        release.wait(5)
        return [item * 10 for item in items]

    gathered = Gathered(fn)
    results: dict[int, list] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, gathered([0, 1])))
    first.start()
    started.wait(5)  # the first run is busy: the next five calls queue up
    others = [threading.Thread(target=lambda i=i: results.__setitem__(i, gathered([i] * i))) for i in range(1, 6)]
    for t in others:
        t.start()
    while sum(len(c.items) for c in gathered._queue) < 15:
        threading.Event().wait(0.01)
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert results == {0: [0, 10], **{i: [i * 10] * i for i in range(1, 6)}}
    assert len(runs) == 2 and sorted(runs[1]) == sorted(i for i in range(1, 6) for _ in range(i))


def test_an_error_in_a_gathered_run_reaches_its_callers_and_the_next_run_works():
    from metagen_plugins.builtin.scorers.gather import Gathered

    def fn(items):
        if "bad" in items:
            raise RuntimeError("cannot score 'bad'")
        return [len(i) for i in items]

    gathered = Gathered(fn)
    with pytest.raises(RuntimeError, match="cannot score"):
        gathered(["ok", "bad"])
    assert gathered(["fine"]) == [4]


def test_llm_judge_scores_candidates_of_different_lengths_in_one_padded_batch(tiny):
    """The judge's left-padded batch gives each candidate the score it gets alone."""
    from metagen_plugins.builtin.scorers.model_scorers import LLMJudge
    from metagen_hooks import Candidate

    model, tok = tiny
    judge = LLMJudge(yes="y", no="n", model=model, tokenizer=tok)
    answers = ["2", "a much longer answer with many words in it", "x"]
    together = judge.score("q: 1+1? ", [Candidate("q", a) for a in answers])
    alone = [judge.score("q: 1+1? ", [Candidate("q", a)])[0] for a in answers]
    assert together == pytest.approx(alone, abs=1e-5)


def test_a_prompts_budget_does_not_depend_on_what_ran_before_or_beside_it(tiny):
    """Two prompts sharing a long prefix: the second computes little of it when the first ran
    before (the host's prefix cache is shared), yet each prompt is charged what it would spend
    alone, so its budget (and any limit on it) is the same in any company."""
    shared = "the quick brown fox jumps over the lazy dog. " * 3
    config = {"strategy": {"name": "best_of_n", "n": 3}, "scorer": {"name": "logprob"},
              "processors": [{"name": "temperature", "temperature": 1.0}],
              "generation": {"seed": 2, "max_new_tokens": 6}}
    model, tok = tiny
    alone = metagen_plugins.run(config, [shared + "B"], model=model, tokenizer=tok)[0].budget.spent()
    after = metagen_plugins.run(config, [shared + "A", shared + "B"], model=model, tokenizer=tok,
                                concurrency=1)[1].budget.spent()
    beside = metagen_plugins.run(config, [shared + "A", shared + "B"], model=model, tokenizer=tok,
                                 concurrency=2)[1].budget.spent()
    for spent in (after, beside):
        spent.pop("wall_time"), alone.pop("wall_time", None)
        assert spent == alone


def test_a_cancelled_run_leaves_the_batch_at_the_next_step_while_others_go_on(tiny):
    """Budget.cancel (a server's deadline, a client gone): the run's request fails with
    BudgetExceeded after the step it was cancelled in, its rows leave the batch, and a request
    decoding beside it is unaffected (the same tokens as alone)."""
    from metagen_hooks import BudgetExceeded
    from metagen_plugins.engines.transformers.requests import Request

    h = host(tiny)
    engine = h.engine
    steps = {"n": 0}
    budget = Budget()

    def cancelled():
        steps["n"] += 1
        if steps["n"] == 3:
            budget.cancel("the deadline passed")
        return budget.cancelled

    tokens = tiny[1]("the quick brown fox")["input_ids"]
    doomed = engine.submit(Request(tokens=list(tokens), n=4, max_new_tokens=1000, cancelled=cancelled))
    beside = h.generator(Budget()).sample(["hello hello hello"], n=1, max_new_tokens=12)
    with pytest.raises(BudgetExceeded, match="the deadline passed"):
        doomed.result(timeout=60)
    assert steps["n"] == 3  # asked once a step: it stopped at the step it was cancelled in
    other = host(tiny)
    alone = other.generator(Budget()).sample(["hello hello hello"], n=1, max_new_tokens=12)
    assert beside[0][0].token_ids == alone[0][0].token_ids
    other.close()
    h.close()


def test_a_model_that_returns_nan_for_one_prompt_fails_that_request_alone(tiny):
    """The model's logits turn NaN in the rows decoding one prompt (a broken weight, an overflow
    in half precision): that request fails with an error naming the model, in the same batch as
    another request that completes, and nothing is sampled from NaN (no processors involved: the
    engine's own check on the chosen tokens' log-probabilities catches it)."""
    model, tok = tiny
    h = host(tiny)
    poison = tok("zebra", add_special_tokens=False).input_ids[-1]

    def poisoned(module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:  # decode steps only: the rows fed the poison token
            output.logits[ids[:, -1] == poison] = float("nan")
        return output

    handle = model.register_forward_hook(poisoned, with_kwargs=True)
    out: dict[str, object] = {}

    def one(prompt, continuation):
        try:
            prefix = Candidate(prompt=prompt, text="", token_ids=continuation)
            out[prompt] = h.generator(Budget()).extend([prefix], n=2, max_new_tokens=4)[0]
        except HostError as exc:
            out[prompt] = exc

    try:
        threads = [threading.Thread(target=one, args=("the quick brown fox", [poison])),
                   threading.Thread(target=one, args=("hello hello hello", []))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        handle.remove()
        h.close()
    assert isinstance(out["the quick brown fox"], HostError)
    assert "the model's logits held NaN" in str(out["the quick brown fox"])
    assert [len(c.token_ids) for c in out["hello hello hello"]] == [4, 4]
