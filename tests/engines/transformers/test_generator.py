"""The transformers Generator: shared prefill, prefix cache, counts."""

import pytest
import torch

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.engines.transformers.prefix_cache import PrefixCache, cache_bytes
from metagen_plugins.engines.transformers.host import TransformersHost


def generator(tiny, config=None, budget=None):
    model, tok = tiny
    cfg = metagen_plugins.validate(config or {}, metagen_plugins.get_registry())
    host = TransformersHost(cfg, metagen_plugins.get_registry(), model=model, tokenizer=tok)
    return host.generator(budget or Budget())


PROMPT = "the quick brown fox jumps over the lazy dog. " * 3


def test_n_greedy_samples_share_one_prefill_and_equal_generate(tiny):
    model, tok = tiny
    gen = generator(tiny)
    [cands] = gen.sample([PROMPT], n=3, max_new_tokens=12)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=2)[0, ids.shape[1]:].tolist()
    assert all(c.token_ids == ref[: len(c.token_ids)] for c in cands)
    length = ids.shape[1]
    assert gen.budget.prompt_tokens_computed == length - 1 + 3
    assert gen.budget.prompt_tokens_reused == (length - 1) * 2
    # 1 prefill pass + one pass per decoding step
    assert gen.budget.forward_passes == 1 + 12


def test_each_request_samples_from_its_own_seeded_stream(tiny):
    """Each step, a seeded request's rows draw from softmax(processed scores), one uniform
    number per row from the request's own generator (derived from the seed, the prompt, the call
    and the prefix index), inverse-CDF: exactly what a hand loop over the full model draws; so
    its tokens do not depend on what shares its batch."""
    from metagen_plugins.engines.transformers.requests import request_generator

    model, tok = tiny
    config = {"processors": [{"name": "temperature", "temperature": 1.2}], "generation": {"seed": 11}}
    [cands] = generator(tiny, config).sample([PROMPT], n=6, max_new_tokens=10)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    stream = request_generator((11, PROMPT, 1, 0))
    rows, done = ids.repeat(6, 1), torch.zeros(6, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(10):
            probs = (model(rows).logits[:, -1, :].float() / 1.2).softmax(-1).double()
            u = torch.rand(6, generator=stream, dtype=torch.float64) * probs.sum(-1)
            chosen = (probs.cumsum(-1) <= u[:, None]).sum(-1)  # the first token whose CDF exceeds u
            chosen = torch.where(done, torch.full_like(chosen, 2), chosen)  # finished rows: padding (EOS)
            done |= chosen == 2
            rows = torch.cat([rows, chosen[:, None]], 1)
    for row, candidate in enumerate(cands):
        new = rows[row, ids.shape[1]:].tolist()
        assert candidate.token_ids == (new[:new.index(2)] if 2 in new else new), row
    assert len({c.text for c in cands}) > 1
    # The same request beside another prompt's, in one call and in one batch: the same rows.
    [again, _] = generator(tiny, config).sample([PROMPT, "another prompt entirely"], n=6, max_new_tokens=10)
    assert [c.token_ids for c in again] == [c.token_ids for c in cands]


def test_extend_reuses_the_cached_prefix_and_continues_exactly(tiny):
    gen = generator(tiny)
    [[first]] = gen.sample([PROMPT], n=1, max_new_tokens=8)
    before = gen.budget.prompt_tokens_computed
    [[longer]] = gen.extend([first], n=1, max_new_tokens=8)
    assert longer.token_ids[:8] == first.token_ids
    assert gen.budget.prompt_tokens_computed - before == 1  # only the last token runs again
    fresh = generator(tiny)
    [[direct]] = fresh.sample([PROMPT], n=1, max_new_tokens=16)
    assert longer.token_ids == direct.token_ids
    assert longer.text == direct.text
    assert longer.logprobs == pytest.approx(direct.logprobs, abs=1e-4)


def test_extend_branches_from_each_sample(tiny):
    config = {"processors": [{"name": "temperature", "temperature": 1.5}], "generation": {"seed": 0}}
    gen = generator(tiny, config)
    [branches] = gen.sample([PROMPT], n=4, max_new_tokens=6)
    before = gen.budget.prompt_tokens_computed
    children = gen.extend(branches, n=2, max_new_tokens=6)
    assert [len(c) for c in children] == [4 * [2]][0]
    for parent, kids in zip(branches, children):
        assert all(k.token_ids[:len(parent.token_ids)] == parent.token_ids for k in kids)
    # each branch paid for its last token once per child, not for the prompt
    assert gen.budget.prompt_tokens_computed - before == 4 * 2


def test_prefix_cache_is_bounded_in_bytes(tiny):
    model, tok = tiny
    ids = torch.tensor([tok("abcdefgh").input_ids])
    out = model(ids, use_cache=True)
    size = cache_bytes(out.cache)
    cache = PrefixCache(max_bytes=2 * size, config=model.config)
    for i, prompt in enumerate(["abcdefgh", "bcdefghi", "cdefghij"]):
        ids = torch.tensor([tok(prompt).input_ids])
        cache.put(tuple(ids[0].tolist()), model(ids, use_cache=True).cache)
    assert cache.bytes <= 2 * size and len(cache.entries) == 2
    assert cache.longest(tuple(tok("abcdefgh").input_ids))[0] == 0  # evicted, least recent
    hit, kv = cache.longest(tuple(tok("cdefghijk").input_ids))
    assert hit == 8 and kv.get_seq_length() == 8


def test_extend_with_no_cache_budget_recomputes(tiny):
    gen = generator(tiny, {"host": {"prefix_cache_bytes": 0}})
    [[first]] = gen.sample([PROMPT], n=1, max_new_tokens=5)
    before = gen.budget.prompt_tokens_computed
    gen.extend([first], n=1, max_new_tokens=5)
    assert gen.budget.prompt_tokens_computed - before == len(gen.prompt_tokens(PROMPT)) + 5


def test_n_must_be_positive_and_prompt_non_empty(tiny):
    gen = generator(tiny)
    with pytest.raises(ValueError, match="n must be >= 1"):
        gen.sample(["x"], n=0)
    with pytest.raises(ValueError, match="empty after tokenization"):
        gen.sample([""], n=1)


# -- shared-prefix attention ---------------------------------------------------------------------

@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_shared_prefix_attention_equals_full_attention(kv_heads):
    from metagen_plugins.engines.transformers.attention import decoding, shared_cache
    from metagen_plugins.testing import tiny_model

    model = tiny_model(60, heads=4, kv_heads=kv_heads, seed=3)
    ids = torch.randint(4, 60, (1, 30), generator=torch.Generator().manual_seed(0))
    rows = torch.cat([ids.repeat(3, 1), torch.randint(4, 60, (3, 4), generator=torch.Generator().manual_seed(1))], 1)
    with torch.no_grad():
        full = model(rows).logits[:, 30:]
        prefix = model(ids, use_cache=True).cache
        cache = shared_cache(prefix, model.config)
        with decoding(model, cache, 3):
            first = model(rows[:, 30:32], cache=cache, use_cache=True).logits  # q > 1: causal
            rest = [model(rows[:, i:i + 1], cache=cache, use_cache=True).logits for i in (32, 33)]
    assert model.config._attn_implementation == "sdpa"  # restored
    shared = torch.cat([first, *rest], dim=1)
    assert torch.allclose(shared, full, atol=1e-5)


def test_batched_loop_and_expanded_generate_path_agree(tiny):
    """Greedy tokens and log-probs: the batched decode loop (shared prefixes) equals one
    generate() call on the prefix KV expanded to n rows."""
    outputs = []
    for shared in (True, False):
        gen = generator(tiny, {"host": {"shared_prefix_attention": shared, "logprobs": True}})
        assert gen.host.shared_prefix is shared
        [cands] = gen.sample([PROMPT], n=3, max_new_tokens=10)
        [[child]] = gen.extend(cands[:1], n=1, max_new_tokens=5)
        outputs.append(([c.token_ids for c in cands], child.token_ids, [c.logprobs for c in cands]))
    assert outputs[0][:2] == outputs[1][:2]
    for a, b in zip(outputs[0][2], outputs[1][2]):
        assert a == pytest.approx(b, abs=1e-4)
