"""Speculative decoding inside the batched engine (speculation.py, draft.py): drafts verified
several positions a step change how many passes the target makes, never what it generates."""

from __future__ import annotations

import pytest
import torch

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.errors import ConfigError
from metagen_plugins.engines.transformers.engine import Engine
from metagen_plugins.engines.transformers.host import TransformersHost
from metagen_plugins.engines.transformers.speculation import Lookup, Speculation, uniforms
from tests.engines.transformers.threads import sample_concurrently

PROMPTS = ["abcabc abcabc abc", "hello world hello world", "x", "1+1=2, 2+2=4, 3+3=6, 4+4=",
           "the quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def other_draft(tmp_path_factory):
    """A draft that mostly disagrees with the tiny target (other weights, one layer)."""
    from metagen_plugins.testing import tiny_model_dir

    return str(tiny_model_dir(tmp_path_factory.mktemp("other-draft"), layers=1, hidden=32, heads=2, seed=5))


def drafting(kind: str, tiny_dir, other_draft) -> dict:
    return {"lookup": {"prompt_lookup_num_tokens": 4},
            "self draft": {"draft_model": str(tiny_dir)},  # the target's own weights: every draft kept
            "other draft": {"draft_model": other_draft, "num_speculative_tokens": 3}}[kind]


KINDS = ["lookup", "self draft", "other draft"]


def host(tiny, settings=None, **config) -> TransformersHost:
    model, tok = tiny
    registry = metagen_plugins.get_registry()
    return TransformersHost(metagen_plugins.validate({"host": settings or {}, **config}, registry), registry,
                            model=model, tokenizer=tok)


class Steps:
    """Counts the engine's decode steps, and those that verified drafts."""

    def __init__(self, monkeypatch) -> None:
        self.decode = self.verify = 0
        step, draft = Engine._step, Speculation.draft

        def counted_step(engine):
            self.decode += 1
            return step(engine)

        def counted_draft(speculation, engine):
            drafts, drafted = draft(speculation, engine)
            self.verify += drafts is not None
            return drafts, drafted

        monkeypatch.setattr(Engine, "_step", counted_step)
        monkeypatch.setattr(Speculation, "draft", counted_draft)


def concurrently(h: TransformersHost, prompts, n: int, max_new_tokens: int, **kwargs):
    """Each prompt's rows (token ids, finish reason), and its candidates, sampled concurrently."""
    out = sample_concurrently(h, prompts, n, max_new_tokens, **kwargs)
    return [[(c.token_ids, c.finish_reason) for c in rows] for rows in out], out


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_output_is_plain_decoding_with_fewer_target_passes(tiny, tiny_dir, other_draft, kind, monkeypatch):
    """Five prompts of different lengths (one of a single token), two rows each, in one batch:
    the same tokens, log-probs and finish reasons as plain decoding; the lookup and the target
    drafting for itself make the target run fewer steps."""
    plain_host = host(tiny)
    steps = Steps(monkeypatch)
    plain, plain_out = concurrently(plain_host, PROMPTS, 2, 40)
    plain_steps, steps.decode = steps.decode, 0
    spec, spec_out = concurrently(host(tiny, {**drafting(kind, tiny_dir, other_draft), "speculative_rows": 64}),
                                  PROMPTS, 2, 40)
    assert spec == plain
    for i in range(len(PROMPTS)):
        for a, b in zip(spec_out[i], plain_out[i]):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert steps.verify > 0  # drafts were verified
    if kind != "other draft":
        assert steps.decode < plain_steps * 0.8


@pytest.mark.parametrize("kind", KINDS)
def test_sampled_output_does_not_depend_on_speculation_draft_or_company(tiny, tiny_dir, other_draft, kind):
    """Seeded sampling with processors (temperature, top-k, a repetition penalty: applied at every
    verified position): the same samples whether the engine speculates or not, and whether a
    prompt decodes alone or with others."""
    config = {"generation": {"seed": 11},
              "processors": [{"name": "temperature", "temperature": 0.8}, {"name": "top_k", "top_k": 20},
                             {"name": "repetition_penalty", "penalty": 1.3}]}
    spec = drafting(kind, tiny_dir, other_draft)
    never, _ = concurrently(host(tiny, {**spec, "speculative_rows": 0}, **config), PROMPTS, 3, 30)
    always, _ = concurrently(host(tiny, {**spec, "speculative_rows": 64}, **config), PROMPTS, 3, 30)
    alone, _ = concurrently(host(tiny, {**spec, "speculative_rows": 64}, **config), PROMPTS[3:4], 3, 30)
    assert always == never
    assert alone[0] == always[3]
    assert len({tuple(tokens) for tokens, _ in always[0]}) > 1  # the rows really sample


def test_speculative_sampling_draws_from_the_targets_distribution(tiny, tiny_dir):
    """1000 rows, two tokens each, drafted by the target itself (so every step verifies): the
    frequencies of the first token, and of the second (whose position is verified after the
    first's draft), match the model's own probabilities (chi-square at the 0.1% level over every
    token expected 5 times or more; a sampler whose numbers are off by a power of 1.3 fails it)."""
    from scipy.stats import chisquare

    model, tok = tiny
    h = host(tiny, {"draft_model": str(tiny_dir), "speculative_rows": 2000}, generation={"seed": 5},
             processors=[{"name": "temperature", "temperature": 0.5}])
    [rows] = h.generator(Budget()).sample(["ab"], n=1000, max_new_tokens=2)
    h.close()
    eos = model.config.eos_token_id
    drawn = [list(r.token_ids) + [eos] * (2 - len(r.token_ids)) for r in rows]  # an EOS ends a row: not in its ids
    ids = tok("ab", return_tensors="pt").input_ids
    vocab = model.config.vocab_size
    with torch.no_grad():
        first = (model(ids).logits[0, -1].double() / 0.5).softmax(-1)
        after = torch.cat([ids.repeat(vocab, 1), torch.arange(vocab)[:, None]], 1)  # every first token
        given = (model(after).logits[:, -1].double() / 0.5).softmax(-1)
    second = first @ given
    second[eos] += first[eos]  # a row ended by EOS counts EOS again (the second position is not drawn)
    second -= first[eos] * given[eos]
    assert chisquare(*frequencies([d[0] for d in drawn], first)).pvalue > 1e-3
    assert chisquare(*frequencies([d[1] for d in drawn], second)).pvalue > 1e-3


def frequencies(tokens: list[int], probs: torch.Tensor):
    """Observed and expected counts of each token expected at least 5 times, the rest together
    (with the least likely of those when the rest is expected fewer than 5 times)."""
    counts = torch.bincount(torch.tensor(tokens), minlength=probs.shape[0]).double()
    expected = probs * len(tokens)
    big = expected >= 5
    observed, expected, rest = counts[big], expected[big], (counts[~big].sum(), expected[~big].sum())
    if rest[1] >= 5:
        observed, expected = torch.cat([observed, rest[0][None]]), torch.cat([expected, rest[1][None]])
    else:
        least = int(expected.argmin())
        observed[least] += rest[0]
        expected[least] += rest[1]
    return observed.numpy(), (expected / expected.sum() * len(tokens)).numpy()


def test_counter_based_uniforms_are_uniform_and_differ_by_row_and_index():
    u = uniforms(torch.arange(4000) * 7919, torch.zeros(4000, dtype=torch.long))
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(u.var()) - 1 / 12) < 0.005
    assert not torch.equal(uniforms(torch.tensor([3]), torch.tensor([0])), uniforms(torch.tensor([3]), torch.tensor([1])))
    assert torch.equal(uniforms(torch.tensor([3, 9]), torch.tensor([4, 4]))[:1], uniforms(torch.tensor([3]), torch.tensor([4])))


def test_stop_strings_eos_and_lengths_end_rows_as_plain_decoding(tiny, tiny_dir, other_draft):
    """A stop string inside a run of kept drafts ends the row right there; so do max_new_tokens."""
    plain, _ = concurrently(host(tiny), PROMPTS, 2, 25, stop=["c", " w"])
    for kind in KINDS:
        spec, _ = concurrently(host(tiny, {**drafting(kind, tiny_dir, other_draft), "speculative_rows": 64}),
                               PROMPTS, 2, 25, stop=["c", " w"])
        assert spec == plain, kind
    assert any(reason == "stop" for rows in plain for _, reason in rows)


@pytest.mark.parametrize("kind", KINDS)
def test_extend_after_speculation_continues_from_the_kept_tokens(tiny, tiny_dir, other_draft, kind):
    """A finished row's KV is remembered without its rejected drafts: extending it (which reads
    the remembered KV from the prefix cache) gives plain decoding's continuation."""
    results = []
    for settings in ({}, {**drafting(kind, tiny_dir, other_draft), "speculative_rows": 64}):
        h = host(tiny, settings)
        generator = h.generator(Budget())
        [first] = generator.sample(["hello world"], n=2, max_new_tokens=12)
        [more] = generator.extend(first[:1], n=2, max_new_tokens=12)
        h.close()
        results.append(([c.token_ids for c in first], [c.token_ids for c in more]))
    assert results[1] == results[0]


def test_a_draft_of_another_vocabulary_is_refused(tiny, tmp_path):
    from metagen_plugins.testing import tiny_model

    other = tmp_path / "other-vocab"
    tiny_model(vocab_size=40).save_pretrained(other)
    with pytest.raises(ConfigError, match=r"\[host\] draft_model has a vocabulary of 40 tokens.*same family"):
        host(tiny, {"draft_model": str(other)})


def test_batching_off_leaves_speculation_to_generate(tiny):
    h = host(tiny, {"prompt_lookup_num_tokens": 3, "batching": False})
    assert h.speculation is None and not h.batched({"prompt_lookup_num_tokens": 3})
    assert host(tiny, {"prompt_lookup_num_tokens": 3}).batched({"prompt_lookup_num_tokens": 3})


def test_draft_lengths_adapt_to_what_the_target_keeps():
    s = Speculation(Lookup(), max_tokens=6)
    k = torch.tensor([3, 3, 3, 6])
    drafted, kept = torch.tensor([3, 3, 0, 6]), torch.tensor([3, 1, 0, 6])
    assert s.adapt(k, drafted, kept).tolist() == [5, 2, 3, 6]


def test_auto_speculates_with_one_row_then_follows_what_it_measures():
    """Until it has timed both kinds of step for a number of rows, "auto" speculates with one row
    only; after WARM steps it tries the other kind one step in EVERY, and once both are timed it
    keeps the one that gave more tokens per second."""
    warm, every, explore = Speculation.WARM, Speculation.EVERY, Speculation.EXPLORE
    steps = warm + (explore + 3) * every

    def run(rows, spec_seconds, plain_seconds):
        s = Speculation(Lookup(), max_tokens=4)
        kinds = []
        for _ in range(steps):
            kind = s.start(rows)
            kinds.append(kind)
            s._started -= spec_seconds if kind else plain_seconds  # the step's time; 2 tokens either way
            s.record(rows, kind, 2)
        return kinds

    def chosen(kinds, first, last):  # the kinds chosen on steps first..last, but the tries of the other kind
        return {kind for step, kind in enumerate(kinds, 1) if first <= step <= last and (step <= warm or step % every)}

    decided = warm + explore * every + 1  # the other kind has been timed EXPLORE times by then
    fast_spec = run(4, 0.01, 0.02)
    assert chosen(fast_spec, 1, warm) == {False}  # four rows: plain, and no try at all in a short run
    assert chosen(fast_spec, decided, steps) == {True}  # ... then the faster
    slow_spec = run(1, 0.02, 0.01)
    assert chosen(slow_spec, 1, warm) == {True} and chosen(slow_spec, decided, steps) == {False}


@pytest.mark.parametrize("kind", ["lookup", "self draft"])
def test_streamed_text_and_watched_tokens_follow_every_kept_token(tiny, tiny_dir, other_draft, kind):
    """Several tokens kept in one step reach the stream and a watching strategy one by one: the
    streamed pieces add up to the candidate's text, and the watch sees each token with its
    log-prob and top log-probs (greedy: the top one is the chosen one's)."""
    from metagen_hooks import Watch

    settings = {**drafting(kind, tiny_dir, other_draft), "speculative_rows": 64}
    h = host(tiny, settings, generation={"max_new_tokens": 30})
    streamed: list[str] = []
    [[streamed_candidate]] = h.generator(Budget(), on_text=streamed.append).sample(["abcabc abcabc abc"])
    seen = {}

    def watch(samples):
        seen.update({s.index: (list(s.token_ids), [list(t) for t in s.top_logprobs], list(s.logprobs))
                     for s in samples})

    [watched] = h.generator(Budget()).sample(["abcabc abcabc abc"], n=2, watch=Watch(watch, top_logprobs=3))
    h.close()
    assert "".join(streamed) == streamed_candidate.text and len(streamed_candidate.token_ids) >= 20
    tokens, tops, logprobs = seen[0]
    assert tokens == watched[0].token_ids == streamed_candidate.token_ids
    assert logprobs == pytest.approx(watched[0].logprobs, abs=1e-5)
    for top, lp in zip(tops, logprobs):
        assert len(top) == 3 and top[0] == pytest.approx(lp, abs=1e-5)


def test_best_of_n_and_beam_search_run_on_a_speculating_engine_with_plain_results(tiny, tiny_dir):
    """Strategies on top: best-of-N (N seeded samples of one prefix) and step-level beam search
    (extend of many prefixes) give the same result with a speculating engine."""
    model, tok = tiny
    for strategy in ({"name": "best_of_n", "n": 4}, {"name": "step_beam_search", "beam_width": 2, "expansions": 2,
                                                      "max_steps": 3, "step_tokens": 6, "delimiter": " "}):
        config = {"strategy": strategy, "scorer": {"name": "logprob"},
                  "generation": {"seed": 3, "max_new_tokens": 16}, "processors": [{"name": "temperature", "temperature": 0.9}]}
        plain = metagen_plugins.run({**config, "host": {"draft_model": str(tiny_dir), "speculative_rows": 0}},
                                    "hello world", model=model, tokenizer=tok)
        spec = metagen_plugins.run({**config, "host": {"draft_model": str(tiny_dir), "speculative_rows": 64}},
                                   "hello world", model=model, tokenizer=tok)
        assert [c.token_ids for c in spec.candidates] == [c.token_ids for c in plain.candidates], strategy["name"]
