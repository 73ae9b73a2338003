"""The transformers host: generate() kwargs and the Generator, on a tiny local model."""


import pytest
import torch
from transformers.generation import logits_process as lp

import metagen_plugins
from metagen_plugins.engines.transformers.finite import _Guard
from tests.plugins import plugins_dir

# (config entry, transformers' own processor built the same way)
EQUIVALENT = [
    ({"name": "temperature", "temperature": 0.7}, lambda: lp.TemperatureLogitsWarper(0.7)),
    ({"name": "top_k", "top_k": 7}, lambda: lp.TopKLogitsWarper(top_k=7)),
    ({"name": "top_p", "top_p": 0.8}, lambda: lp.TopPLogitsWarper(top_p=0.8)),
    ({"name": "min_p", "min_p": 0.1}, lambda: lp.MinPLogitsWarper(min_p=0.1)),
    ({"name": "typical", "mass": 0.7}, lambda: lp.TypicalLogitsWarper(mass=0.7)),
    ({"name": "epsilon", "epsilon": 0.02}, lambda: lp.EpsilonLogitsWarper(epsilon=0.02)),
    ({"name": "eta", "epsilon": 0.02}, lambda: lp.EtaLogitsWarper(epsilon=0.02)),
    ({"name": "repetition_penalty", "penalty": 1.3}, lambda: lp.RepetitionPenaltyLogitsProcessor(1.3)),
    ({"name": "no_repeat_ngram", "ngram_size": 2}, lambda: lp.NoRepeatNGramLogitsProcessor(2)),
    ({"name": "logit_bias", "bias": {"3": -4.0, "9": 2.5}},
     lambda: lp.SequenceBiasLogitsProcessor([[[3], -4.0], [[9], 2.5]])),
    ({"name": "bad_words", "bad_words_ids": [[4, 5], [6]]}, lambda: lp.NoBadWordsLogitsProcessor([[4, 5], [6]])),
]


@pytest.mark.parametrize("entry,reference", EQUIVALENT, ids=[e["name"] for e, _ in EQUIVALENT])
def test_processor_equals_transformers_own_class(entry, reference):
    kwargs = metagen_plugins.generate_kwargs({"processors": [entry]})
    [processor] = [p for p in kwargs["logits_processor"] if not isinstance(p, _Guard)]
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 40, (3, 12), generator=generator)
    input_ids[:, -1] = 4  # so bad_words [4, 5] is live
    scores = torch.randn(3, 40, generator=generator) * 3
    expected = reference()(input_ids, scores.clone())
    assert torch.equal(processor(input_ids, scores.clone()), expected)
    assert type(processor) is type(reference())


def test_sampling_processors_turn_sampling_on_and_neutralise_generate_defaults():
    kwargs = metagen_plugins.generate_kwargs({"processors": [{"name": "top_p", "top_p": 0.9}]})
    assert kwargs["do_sample"] is True and kwargs["top_k"] == 0 and kwargs["temperature"] == 1.0
    kwargs = metagen_plugins.generate_kwargs({"processors": [{"name": "repetition_penalty", "penalty": 1.2}]})
    assert kwargs["do_sample"] is False
    assert metagen_plugins.generate_kwargs({"generation": {"do_sample": True}})["do_sample"] is True


def test_generate_kwargs_drive_model_generate_like_the_processors_built_by_hand(tiny):
    model, tok = tiny
    config = {"processors": [{"name": "temperature", "temperature": 0.8}, {"name": "top_k", "top_k": 5}],
              "generation": {"max_new_tokens": 12}}
    inputs = tok(["abc", "hello"], return_tensors="pt", padding=True)
    torch.manual_seed(3)
    ours = model.generate(**inputs, **metagen_plugins.generate_kwargs(config, model=model, tokenizer=tok),
                          pad_token_id=0)
    torch.manual_seed(3)
    theirs = model.generate(**inputs, do_sample=True, temperature=0.8, top_k=5, max_new_tokens=12, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_stop_strings_need_the_tokenizer():
    with pytest.raises(metagen_plugins.ConfigError, match="needs the host's 'tokenizer'.*pass tokenizer="):
        metagen_plugins.generate_kwargs({"stopping": [{"name": "stop_strings", "stop": ["."]}]})


def test_stopping_criterion_stops_only_its_row(tiny):
    model, tok = tiny
    ids = tok(["ab", "ab"], return_tensors="pt").input_ids
    free = model.generate(ids[:1], max_new_tokens=20, do_sample=False, pad_token_id=2)[0, 2:]
    text = tok.decode(free)
    stop = text[3:5]  # a string the greedy continuation reaches after a few tokens
    kwargs = metagen_plugins.generate_kwargs({"stopping": [{"name": "stop_strings", "stop": [stop]}],
                                              "generation": {"max_new_tokens": 20}}, tokenizer=tok)
    # row 0 stops at the stop string; row 1 has a different prompt and keeps going
    batch = tok(["ab", "zz"], return_tensors="pt", padding=True)
    out = model.generate(**batch, **kwargs, pad_token_id=2)
    first = tok.decode(out[0, 2:], skip_special_tokens=True)
    assert first.endswith(stop) and len(first) < len(text)
    assert (out[1, 2:] != 2).sum() > len(first)


def test_run_plain_generation_equals_greedy_generate(tiny):
    model, tok = tiny
    result = metagen_plugins.run({"generation": {"max_new_tokens": 15}}, "hello there", model=model, tokenizer=tok)
    ids = tok("hello there", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=15, do_sample=False, pad_token_id=2)[0, ids.shape[1]:]
    assert result.best.token_ids == [t for t in expected.tolist() if t != 2][: len(result.best.token_ids)]
    assert result.best.text == tok.decode(result.best.token_ids, skip_special_tokens=True)
    spent = result.budget.spent()
    assert spent["tokens_generated"] >= len(result.best.token_ids)
    assert spent["prompt_tokens_computed"] == ids.shape[1]
    assert spent["forward_passes"] == 1 + len(result.best.token_ids) + (result.best.finish_reason == "stop")


def test_logprobs_are_the_models_own(tiny):
    model, tok = tiny
    result = metagen_plugins.run({"generation": {"max_new_tokens": 6}}, "abc", model=model, tokenizer=tok)
    full = torch.tensor([tok("abc").input_ids + result.best.token_ids])
    with torch.no_grad():
        logits = model(full).logits.log_softmax(-1)[0]
    expected = [logits[2 + i, t].item() for i, t in enumerate(result.best.token_ids)]
    assert result.best.logprobs == pytest.approx(expected, abs=1e-4)


def test_generate_paths_keep_logits_only_for_log_probabilities_a_component_reads(tiny):
    """One generate() per request ([host] batching = false) keeps every step's logits only when a
    component reads the log-probabilities (here the logprob scorer) or [host] logprobs = true: the
    same tokens either way, and the same log-probabilities as the batched engine, which computes
    them anyway."""
    model, tok = tiny
    base = {"host": {"batching": False}, "generation": {"max_new_tokens": 6}}
    unread = metagen_plugins.run(base, "abc", model=model, tokenizer=tok)
    read = metagen_plugins.run({**base, "scorer": {"name": "logprob"}, "strategy": {"name": "best_of_n", "n": 1}},
                               "abc", model=model, tokenizer=tok)
    batched = metagen_plugins.run({"generation": {"max_new_tokens": 6}}, "abc", model=model, tokenizer=tok)
    assert unread.best.token_ids == read.best.token_ids == batched.best.token_ids != []
    forced = metagen_plugins.run({**base, "host": {"batching": False, "logprobs": True}}, "abc", model=model,
                                 tokenizer=tok)
    assert unread.best.logprobs == []
    assert read.best.logprobs == pytest.approx(batched.best.logprobs, abs=1e-4)
    assert forced.best.logprobs == pytest.approx(batched.best.logprobs, abs=1e-4)  # [host] logprobs = true
    assert read.scores == pytest.approx([sum(read.best.logprobs) / len(read.best.logprobs)])


def test_shared_prefill_samples_n_and_counts_reuse(tiny):
    model, tok = tiny
    host_config = metagen_plugins.validate({"processors": [{"name": "temperature", "temperature": 1.0}]},
                                           metagen_plugins.get_registry())
    from metagen_hooks import Budget
    from metagen_plugins.engines.transformers.host import TransformersHost

    host = TransformersHost(host_config, metagen_plugins.get_registry(), model=model, tokenizer=tok)
    budget = Budget()
    torch.manual_seed(0)
    [cands] = host.generator(budget).sample(["the quick brown fox"], n=4, max_new_tokens=8)
    assert len(cands) == 4 and len({c.text for c in cands}) > 1
    prompt_len = len(tok("the quick brown fox").input_ids)
    assert budget.prompt_tokens_computed == prompt_len - 1 + 4
    assert budget.prompt_tokens_reused == (prompt_len - 1) * 3


def test_seed_makes_runs_reproducible(tiny):
    model, tok = tiny
    config = {"processors": [{"name": "temperature", "temperature": 1.5}],
              "generation": {"seed": 7, "max_new_tokens": 10}}
    a = metagen_plugins.run(config, ["ab", "cd"], model=model, tokenizer=tok)
    b = metagen_plugins.run(config, ["ab", "cd"], model=model, tokenizer=tok)
    assert [r.best.text for r in a] == [r.best.text for r in b]


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(metagen_plugins.HostError, match="neither a local directory nor a built-in model.*from_pretrained.*smollm2-135m-instruct"):
        metagen_plugins.run({"host": {"model": str(tmp_path / "none")}}, "x")


# -- speculative decoding and KV-cache kwargs ---------------------------------------------------

@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    from metagen_plugins.testing import tiny_model_dir

    return tiny_model_dir(tmp_path_factory.mktemp("draft"), layers=1, hidden=32, heads=2, seed=5)


def test_draft_model_becomes_assistant_model_with_identical_greedy_output(tiny, draft_dir):
    model, tok = tiny
    kwargs = metagen_plugins.generate_kwargs({"host": {"draft_model": str(draft_dir)},
                                              "generation": {"max_new_tokens": 16}})
    assert kwargs["assistant_model"].config.num_hidden_layers == 1
    inputs = tok("hello world", return_tensors="pt")
    plain = model.generate(**inputs, max_new_tokens=16, do_sample=False, pad_token_id=2)
    assert torch.equal(model.generate(**inputs, **kwargs, pad_token_id=2), plain)
    result = metagen_plugins.run({"host": {"draft_model": str(draft_dir)}, "generation": {"max_new_tokens": 16}},
                                 "hello world", model=model, tokenizer=tok)
    assert result.best.token_ids == [t for t in plain[0, inputs.input_ids.shape[1]:].tolist() if t != 2]


def test_prompt_lookup_keeps_greedy_output(tiny):
    model, tok = tiny
    config = {"host": {"prompt_lookup_num_tokens": 3}, "generation": {"max_new_tokens": 16}}
    assert metagen_plugins.generate_kwargs(config)["prompt_lookup_num_tokens"] == 3
    plain = metagen_plugins.run({"generation": {"max_new_tokens": 16}}, "abcabcabc abc", model=model, tokenizer=tok)
    looked = metagen_plugins.run(config, "abcabcabc abc", model=model, tokenizer=tok)
    assert looked.best.token_ids == plain.best.token_ids


@pytest.mark.parametrize("kv_cache,backend", [
    ("quantized", "quanto"),
    ({"implementation": "quantized", "backend": "fp8"}, "fp8"),
])
def test_quantized_kv_cache(tiny, kv_cache, backend):
    from transformers import QuantizedCache

    model, tok = tiny
    kwargs = metagen_plugins.generate_kwargs({"host": {"kv_cache": kv_cache}, "generation": {"max_new_tokens": 8}})
    assert kwargs["cache_implementation"] == "quantized" and kwargs["cache_config"]["backend"] == backend
    out = model.generate(**tok("hello " * 40, return_tensors="pt"), **kwargs, pad_token_id=2,
                         return_dict_in_generate=True)
    assert isinstance(out.cache, QuantizedCache)
    result = metagen_plugins.run({"host": {"kv_cache": kv_cache}, "generation": {"max_new_tokens": 8}},
                                 "hello " * 40, model=model, tokenizer=tok)
    assert len(result.best.token_ids) <= 8 and result.budget.prompt_tokens_reused == 0


# -- the generate() path is as safe as run() -------------------------------------------------



def _greedy_first_token(model, tok, prompt):
    inputs = tok(prompt, return_tensors="pt")
    return int(model(**inputs).logits[0, -1].argmax())


def test_a_constraint_applies_before_truncation_whatever_the_listed_order(tiny, tmp_path, registry):
    """top_k = 1 keeps only the model's favourite token; a constraint listed after it that bans
    that token would leave nothing to sample. Constraints apply first, as in transformers."""
    model, tok = tiny
    registry(plugins_dir=plugins_dir(tmp_path, only_token="only"))
    favourite = _greedy_first_token(model, tok, "hello")
    allowed = (favourite + 1) % len(tok)
    config = {"processors": [{"name": "top_k", "top_k": 1}, {"name": "only_token", "token_id": allowed}]}
    assert [e["name"] for e in metagen_plugins.validate(config, metagen_plugins.get_registry()).processors] == \
        ["only_token", "top_k"]
    kwargs = metagen_plugins.generate_kwargs(config)
    out = model.generate(**tok("hello", return_tensors="pt"), **kwargs, max_new_tokens=3, pad_token_id=0)
    assert out[0, -3:].tolist() == [allowed] * 3

    # the built-in bad_words is such a constraint: banning the favourite after top_k = 1 works
    banned = {"processors": [{"name": "top_k", "top_k": 1}, {"name": "bad_words", "bad_words_ids": [[favourite]]}]}
    kwargs = metagen_plugins.generate_kwargs(banned)
    out = model.generate(**tok("hello", return_tensors="pt"), **kwargs, max_new_tokens=1, pad_token_id=0)
    assert out[0, -1].item() != favourite


def test_generate_kwargs_names_the_processor_that_left_no_token(tiny, tmp_path, registry):
    """A ban not declared as a constraint stays where it is listed; when it empties the row,
    model.generate stops with an error naming it (not inside torch.multinomial)."""
    model, tok = tiny
    registry(plugins_dir=plugins_dir(tmp_path, only_token="only"))
    favourite = _greedy_first_token(model, tok, "hello")
    config = {"processors": [{"name": "top_k", "top_k": 1},
                             {"name": "only_token_unmarked", "token_id": (favourite + 1) % len(tok)}]}
    kwargs = metagen_plugins.generate_kwargs(config)
    with pytest.raises(metagen_plugins.HostError,
                       match=r"processors\[1\]: logits processor 'only_token_unmarked' .* produced only -inf"):
        model.generate(**tok("hello", return_tensors="pt"), **kwargs, max_new_tokens=2, pad_token_id=0)


@pytest.mark.slow
def test_the_readme_pattern_with_min_p_before_a_json_grammar_on_smollm2():
    """The user report: temperature -> min_p -> grammar on SmolLM2 died in torch.multinomial
    (min_p kept no token the grammar allows). The grammar now applies first: valid JSON."""
    import json

    from metagen_plugins.models import load_model, load_tokenizer, resolve

    path = resolve("smollm2-135m-instruct")
    model, tok = load_model(path), load_tokenizer(path)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    config = {"processors": [{"name": "temperature", "temperature": 0.7}, {"name": "min_p", "min_p": 0.05},
                             {"name": "grammar", "json_schema": schema}]}
    prompt = tok.apply_chat_template([{"role": "user", "content": "Invent a person. Reply in JSON with name and age."}],
                                     add_generation_prompt=True, tokenize=False)
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
    for seed in range(3):  # a grammar processor follows one generation: fresh kwargs for each
        kwargs = metagen_plugins.generate_kwargs(config, model=model, tokenizer=tok)
        torch.manual_seed(seed)
        out = model.generate(**inputs, **kwargs, max_new_tokens=40)
        value = json.loads(tok.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True))
        assert set(value) == {"name", "age"} and isinstance(value["age"], int)
