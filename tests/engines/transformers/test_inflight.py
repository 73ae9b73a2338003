"""Samples watched and cancelled as they decode on the in-process host (metagen_hooks.inflight):
cancelled rows leave the batch (fewer rows computed), the others are unchanged, the budget
counts what ran."""

from __future__ import annotations

import pytest
import torch

import metagen_plugins
from metagen_hooks import Budget, Watch
from metagen_hooks.inflight import CANCELLED, live
from metagen_plugins.engines.transformers.host import TransformersHost

SAMPLED = {"generation": {"do_sample": True, "seed": 7, "max_new_tokens": 40}}


def host(tiny, config=None) -> TransformersHost:
    model, tok = tiny
    registry = metagen_plugins.get_registry()
    return TransformersHost(metagen_plugins.validate(config or {}, registry), registry, model=model, tokenizer=tok)


class RowCounter:
    """Counts the rows of every decode step (one-token forward passes) of a model."""

    def __init__(self, model) -> None:
        self.rows = 0
        self.hook = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            self.rows += ids.shape[0]


def test_cancelled_samples_stop_and_the_others_are_unchanged(tiny):
    """Seeded sampling, 6 samples: the watch cancels samples 1 and 4 once they have 5 tokens.
    They come back cancelled with a prefix of what they would have generated; the other four
    equal the unwatched run token for token; the budget counts the tokens that ran."""
    plain = host(tiny, SAMPLED)
    [reference] = plain.generator(Budget()).sample(["the quick brown fox"], n=6)
    plain.close()
    h = host(tiny, SAMPLED)
    calls = []

    def watch(samples):
        calls.append([len(s.token_ids) for s in samples])
        for s in samples:
            if s.index in (1, 4) and len(s.token_ids) >= 5:
                s.cancel("enough of this one")

    budget = Budget()
    [watched] = h.generator(budget).sample(["the quick brown fox"], n=6, watch=Watch(watch))
    h.close()
    assert len(calls) > 5  # called as they decode, not once at the end
    for i, (got, ref) in enumerate(zip(watched, reference)):
        if i in (1, 4):
            assert got.finish_reason == CANCELLED
            assert 5 <= len(got.token_ids) < len(ref.token_ids)
            assert got.token_ids == ref.token_ids[:len(got.token_ids)]
        else:
            assert (got.token_ids, got.finish_reason) == (ref.token_ids, ref.finish_reason)
            assert got.logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    ran = sum(len(c.token_ids) + (c.finish_reason == "stop") for c in watched)
    assert budget.tokens_generated == ran


def test_cancelled_rows_leave_the_batch_so_fewer_rows_are_computed(tiny):
    """Eight samples of 60 tokens; six cancelled after 4 tokens. Counting the rows of every
    decode step: far fewer than the 8 x 60 of the uncancelled run (the rows left the batch)."""
    config = {"generation": {"do_sample": True, "seed": 3, "max_new_tokens": 60}}
    model = tiny[0]
    full = host(tiny, config)
    counter = RowCounter(model)
    full.generator(Budget()).sample(["hello hello hello"], n=8)
    full.close()
    uncancelled, counter.rows = counter.rows, 0

    def watch(samples):
        for s in samples:
            if s.index >= 2 and len(s.token_ids) >= 4:
                s.cancel()

    h = host(tiny, config)
    [out] = h.generator(Budget()).sample(["hello hello hello"], n=8, watch=Watch(watch))
    h.close()
    counter.hook.remove()
    assert sum(c.finish_reason == CANCELLED for c in out) == 6
    assert uncancelled >= 8 * 50
    assert counter.rows < uncancelled / 2, (counter.rows, uncancelled)


def test_cancelling_every_sample_frees_the_slot_for_waiting_work(tiny):
    """With room for one request at a time, a second waits; cancelling all of the first's samples
    after a few tokens lets the second start long before the first would have ended (200 tokens):
    the first's call returns first, the second's runs whole."""
    import threading

    config = {"generation": {"max_new_tokens": 200}, "host": {"max_batch_tokens": 900}}
    h = host(tiny, config)
    decoding = threading.Event()

    def watch(samples):
        decoding.set()
        if all(len(s.token_ids) >= 3 for s in samples):
            for s in live(samples):
                s.cancel()

    order, out = [], {}

    def first():
        out["first"] = h.generator(Budget()).sample(["hello"], n=4, watch=Watch(watch))[0]
        order.append("first")

    def second():
        out["second"] = h.generator(Budget()).sample(["abc"], n=2, max_new_tokens=20)[0]
        order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert decoding.wait(30)  # the first decodes: the second (4 + 2 x 201 more tokens of KV) must wait
    threads[1].start()
    for t in threads:
        t.join(60)
    h.close()
    assert all(c.finish_reason == CANCELLED and 3 <= len(c.token_ids) < 10 for c in out["first"])
    assert order == ["first", "second"] and all(len(c.token_ids) > 0 for c in out["second"])


def test_top_logprobs_come_with_each_token_and_greedy_picks_the_top(tiny):
    seen = {}

    def watch(samples):
        seen.update({s.index: (list(s.token_ids), [list(t) for t in s.top_logprobs], list(s.logprobs))
                     for s in samples})

    h = host(tiny, {"generation": {"max_new_tokens": 12}})
    [out] = h.generator(Budget()).sample(["the quick"], n=2, watch=Watch(watch, top_logprobs=5))
    h.close()
    tokens, tops, logprobs = seen[0]
    assert tokens == out[0].token_ids[:len(tokens)] and len(tokens) >= 10
    for top, lp in zip(tops, logprobs):
        assert len(top) == 5 and top == sorted(top, reverse=True)
        assert top[0] == pytest.approx(lp, abs=1e-5)  # greedy: the chosen token is the likeliest


def test_a_watch_that_raises_stops_its_samples_and_fails_its_call(tiny):
    h = host(tiny, {"generation": {"max_new_tokens": 400}})

    def watch(samples):
        if any(len(s.token_ids) >= 3 for s in samples):
            raise RuntimeError("the strategy's bug")

    with pytest.raises(RuntimeError, match="the strategy's bug"):
        h.generator(Budget()).sample(["hello"], n=3, watch=Watch(watch))
    # the engine is free again: the next call runs
    assert h.generator(Budget()).sample(["hello"], n=1, max_new_tokens=3)[0][0].token_ids
    h.close()


def test_esc_on_the_transformers_host_spends_fewer_tokens_than_self_consistency(tiny):
    """End to end through run(): a prompt whose samples always agree (greedy) settles after one
    window; self-consistency spends all 16."""
    model, tok = tiny
    config = {"generation": {"max_new_tokens": 8}}
    sc = metagen_plugins.run({**config, "strategy": {"name": "self_consistency", "n": 16, "answer_pattern": "(.+)"}},
                             "hello", model=model, tokenizer=tok)
    esc = metagen_plugins.run({**config, "strategy": {"name": "esc", "n": 16, "window": 4, "answer_pattern": "(.+)"}},
                              "hello", model=model, tokenizer=tok)
    assert esc.best.text == sc.best.text
    assert esc.budget.samples == 4 and sc.budget.samples == 16
    assert esc.budget.tokens_generated * 4 == sc.budget.tokens_generated
