"""Behaviour of metagen's own token-level components on real generate() runs."""

import json
import re

import pytest
import torch

import metagen_plugins
from metagen_plugins.engines.transformers.finite import _Guard
from metagen_plugins.testing import tiny_model_dir


def processors(config, **context):
    """The configured processors, without the finiteness checks generate_kwargs puts after each."""
    return [p for p in metagen_plugins.generate_kwargs(config, **context).get("logits_processor", [])
            if not isinstance(p, _Guard)]


def criteria(config, **context):
    return list(metagen_plugins.generate_kwargs(config, **context).get("stopping_criteria", []))


# -- penalties ---------------------------------------------------------------------------------

def test_frequency_and_presence_penalties_count_generated_tokens_only():
    [freq] = processors({"processors": [{"name": "frequency_penalty", "penalty": 0.5}]})
    [pres] = processors({"processors": [{"name": "presence_penalty", "penalty": 0.7}]})
    prompt = torch.tensor([[5, 5, 5, 6]])
    scores = torch.zeros(1, 10)
    assert torch.equal(freq(prompt, scores), scores) and torch.equal(pres(prompt, scores), scores)
    grown = torch.tensor([[5, 5, 5, 6, 7, 7, 5]])  # generated: 7, 7, 5
    expected_freq = torch.zeros(1, 10)
    expected_freq[0, 7], expected_freq[0, 5] = -1.0, -0.5
    assert torch.equal(freq(grown, scores), expected_freq)
    expected_pres = torch.zeros(1, 10)
    expected_pres[0, 7] = expected_pres[0, 5] = -0.7
    assert torch.allclose(pres(grown, scores), expected_pres)


def test_penalty_range_is_checked_at_validation():
    with pytest.raises(metagen_plugins.ConfigError, match=r"frequency_penalty.*\[-2, 2\]"):
        processors({"processors": [{"name": "frequency_penalty", "penalty": 3.0}]})


# -- Mirostat --------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [1.5, 3.0, 4.5])
def test_mirostat_running_surprise_tracks_its_target(tiny, target):
    model, tok = tiny
    kwargs = metagen_plugins.generate_kwargs(
        {"processors": [{"name": "mirostat", "target": target}], "generation": {"max_new_tokens": 250}})
    [mirostat] = [p for p in kwargs["logits_processor"] if not isinstance(p, _Guard)]
    assert kwargs["do_sample"] is True
    torch.manual_seed(0)
    model.generate(**tok(["hello"] * 4, return_tensors="pt"), **kwargs, pad_token_id=0, eos_token_id=None)
    late = mirostat.surprises[100:]
    # the model's own entropy is ~6 bits; Mirostat holds the observed surprise at the target
    assert sum(late) / len(late) == pytest.approx(target, abs=0.25)


# -- multi-model processors ------------------------------------------------------------------

@pytest.fixture(scope="module")
def side_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("side-models")
    return tiny_model_dir(root / "a", seed=1), tiny_model_dir(root / "b", seed=2)


def _forward_logits(path, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(path)(ids).logits[:, -1].float()


def test_contrastive_with_no_amateur_weight_is_the_expert(tiny, side_dirs):
    model, tok = tiny
    inputs = tok("hello world", return_tensors="pt")
    plain = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=2)
    kwargs = metagen_plugins.generate_kwargs(
        {"processors": [{"name": "contrastive", "amateur": str(side_dirs[0]), "alpha": 0.0, "beta": 0.0}]},
        tokenizer=tok)
    assert torch.equal(model.generate(**inputs, **kwargs, max_new_tokens=12, pad_token_id=2), plain)
    kwargs = metagen_plugins.generate_kwargs(
        {"processors": [{"name": "contrastive", "amateur": str(side_dirs[0]), "beta": 1.0}]}, tokenizer=tok)
    assert not torch.equal(model.generate(**inputs, **kwargs, max_new_tokens=12, pad_token_id=2), plain)


def test_contrastive_scores_follow_the_formula(tiny, side_dirs):
    model, tok = tiny
    [cd] = processors({"processors": [{"name": "contrastive", "amateur": str(side_dirs[0]),
                                       "alpha": 0.1, "beta": 0.5}]}, tokenizer=tok)
    ids = torch.tensor([tok("abc de").input_ids])
    expert = torch.randn(1, len(tok)) * 3
    out = cd(ids, expert.clone())
    e, a = expert.log_softmax(-1), _forward_logits(side_dirs[0], ids).log_softmax(-1)
    plausible = e.exp() >= 0.1 * e.exp().max()
    assert torch.isinf(out[~plausible]).all()
    assert torch.allclose(out[plausible], (1.5 * e - 0.5 * a)[plausible], atol=1e-5)


def test_dexperts_adds_expert_minus_antiexpert_at_every_step(tiny, side_dirs):
    model, tok = tiny
    a, b = map(str, side_dirs)
    [dx] = processors({"processors": [{"name": "dexperts", "expert": a, "antiexpert": b, "alpha": 2.0}]},
                      tokenizer=tok)
    batch = tok(["abc", "hello world"], return_tensors="pt", padding=True)
    ids = batch.input_ids
    for step in range(3):  # incremental side-model caches must match a fresh forward pass
        base = torch.randn(2, len(tok))
        out = dx(ids, base.clone())
        for row in range(2):
            real = ids[row][batch.attention_mask[row].bool()] if step == 0 else ids[row][ids[row] != 0]
            expected = base[row] + 2.0 * (_forward_logits(a, real[None])[0] - _forward_logits(b, real[None])[0])
            assert torch.allclose(out[row], expected, atol=1e-4), (step, row)
        ids = torch.cat([ids, torch.tensor([[7], [9]])], dim=1)


def test_logit_arithmetic_with_cancelling_weights_is_the_base_model(tiny, side_dirs):
    model, tok = tiny
    a = str(side_dirs[0])
    kwargs = metagen_plugins.generate_kwargs(
        {"processors": [{"name": "logit_arithmetic", "models": [a, a], "weights": [0.5, -0.5]}]}, tokenizer=tok)
    inputs = tok("some text", return_tensors="pt")
    plain = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=2)
    assert torch.equal(model.generate(**inputs, **kwargs, max_new_tokens=10, pad_token_id=2), plain)


def test_proxy_tuning_runs_in_the_strategy_path(tiny, side_dirs):
    model, tok = tiny
    a, b = map(str, side_dirs)
    result = metagen_plugins.run({"processors": [{"name": "proxy_tuning", "expert": a, "antiexpert": b}],
                                  "generation": {"max_new_tokens": 6}}, "abc", model=model, tokenizer=tok)
    assert len(result.best.token_ids) <= 6


def test_missing_side_model_is_a_clear_error(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(metagen_plugins.HostError, match="the amateur = .*neither a local directory"):
        processors({"processors": [{"name": "contrastive", "amateur": str(tmp_path / "no")}]}, tokenizer=tok)


# -- grammar ---------------------------------------------------------------------------------

def test_every_sampled_output_matches_the_regex(tiny):
    model, tok = tiny
    pattern = r"[0-9]{3}-[a-z]{2,5}\."
    result = metagen_plugins.run({"processors": [{"name": "grammar", "regex": pattern}],
                                  "generation": {"do_sample": True, "max_new_tokens": 20, "seed": 0},
                                  "strategy": {"name": "generate"}}, "code:", model=model, tokenizer=tok)
    assert re.fullmatch(pattern, result.best.text)
    kwargs = metagen_plugins.generate_kwargs({"processors": [{"name": "grammar", "regex": pattern}],
                                              "generation": {"do_sample": True, "max_new_tokens": 20}},
                                             tokenizer=tok)
    torch.manual_seed(1)
    out = model.generate(**tok(["code:"] * 8, return_tensors="pt"), **kwargs, pad_token_id=2)
    texts = [tok.decode(row[5:], skip_special_tokens=True) for row in out]
    assert all(re.fullmatch(pattern, t) for t in texts), texts
    assert len(set(texts)) > 1


def test_every_sampled_output_validates_against_the_json_schema(tiny):
    model, tok = tiny
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
              "required": ["ok", "n"], "additionalProperties": False}
    kwargs = metagen_plugins.generate_kwargs({"processors": [{"name": "grammar", "json_schema": schema}],
                                              "generation": {"do_sample": True, "max_new_tokens": 30}},
                                             tokenizer=tok)
    torch.manual_seed(2)
    out = model.generate(**tok(["json:"] * 8, return_tensors="pt"), **kwargs, pad_token_id=2)
    for row in out:
        value = json.loads(tok.decode(row[5:], skip_special_tokens=True))
        assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool) and value["n"] in (1, 2, 3)


def test_grammar_errors_name_the_problem(tiny):
    model, tok = tiny
    with pytest.raises(metagen_plugins.ConfigError, match="exactly one of regex, json_schema or lark"):
        processors({"processors": [{"name": "grammar"}]}, tokenizer=tok)
    with pytest.raises(metagen_plugins.ConfigError, match="regex is not a valid grammar"):
        processors({"processors": [{"name": "grammar", "regex": "[a-"}]}, tokenizer=tok)


# -- stopping criteria -----------------------------------------------------------------------

@pytest.mark.parametrize("entry,done_text,running_text", [
    ({"name": "step_delimiter", "delimiter": ". "}, "37+48=85. ", "37+48=8"),
    ({"name": "answer_complete"}, "so #### 66\n", "so #### 66"),
    ({"name": "regex", "pattern": r"answer: \d+;"}, "the answer: 12;", "the answer: 12"),
])
def test_text_criteria_stop_only_the_finished_row(tiny, entry, done_text, running_text):
    _, tok = tiny
    [criterion] = criteria({"stopping": [entry]}, tokenizer=tok)
    criterion.prompt_length = len(tok("p: ").input_ids)
    width = max(len(tok("p: " + done_text).input_ids), len(tok("p: " + running_text).input_ids))
    rows = []
    for text in (done_text, running_text):
        ids = tok("p: " + text).input_ids
        rows.append(ids + [2] * (width - len(ids)))  # a finished row is padded on the right
    done = criterion(torch.tensor(rows), torch.zeros(2, len(tok)))
    assert done.tolist() == [True, False]


def test_step_delimiter_ends_a_real_generation_at_the_step(tiny):
    model, tok = tiny
    config = {"processors": [{"name": "grammar", "regex": r"(ab\. ){3}"}],
              "stopping": [{"name": "step_delimiter", "delimiter": ". "}],
              "generation": {"max_new_tokens": 20}}
    result = metagen_plugins.run(config, "go", model=model, tokenizer=tok)
    assert result.best.text == "ab. " and result.best.finish_reason == "stop"


def test_token_budget_and_confidence_stop_rows(tiny):
    model, tok = tiny
    [budget] = criteria({"stopping": [{"name": "token_budget", "max_tokens": 3}]})
    ids = torch.ones(2, 5, dtype=torch.long)
    assert budget(ids, None).tolist() == [False, False]  # first call: prompt of 4 + 1 new
    assert budget(torch.ones(2, 7, dtype=torch.long), None).tolist() == [True, True]

    [confidence] = criteria({"stopping": [{"name": "confidence", "threshold": -2.0, "window": 2,
                                           "min_tokens": 2}]})
    confident = torch.full((2, 10), -10.0)
    confident[:, 3] = 10.0  # row 0 and 1 both sure of token 3 ...
    confident[1] = 0.0  # ... except row 1, which is uniform over 10 tokens (log p = -2.3)
    ids = torch.tensor([[1, 3], [1, 3]])
    assert confidence(ids, confident).tolist() == [False, False]
    ids = torch.tensor([[1, 3, 3], [1, 3, 3]])
    assert confidence(ids, confident).tolist() == [False, True]
    assert confidence.weak == {1}


# -- token healing ---------------------------------------------------------------------------

def test_token_healing_regrows_the_prompts_last_token_as_an_extension():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from metagen_hooks import Budget
    from metagen_plugins.engines.transformers.host import TransformersHost
    from metagen_plugins.testing import tiny_model

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["the link is https://a.com and http://b.org"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    prompt = "the link is http"
    assert tok.tokenize(prompt)[-1] == "Ġhttp"  # a tail with longer alternatives ("Ġhttps", ...)
    config = metagen_plugins.validate({"generation": {"token_healing": True}}, metagen_plugins.get_registry())
    for seed in range(4):
        host = TransformersHost(config, metagen_plugins.get_registry(), model=tiny_model(len(tok), seed=seed),
                                tokenizer=tok)
        healed = host.generator(Budget()).prompt_tokens(prompt)
        text = tok.decode(healed)
        assert text.startswith(prompt) and tok.decode(healed[:-1]) == "the link is"
    with pytest.raises(metagen_plugins.ConfigError, match="token_healing needs the tokenizer"):
        metagen_plugins.generate_kwargs({"generation": {"token_healing": True}})
