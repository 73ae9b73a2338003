"""Reward-model and judge scorers over local transformers checkpoints (tiny random ones here)."""

import math

import pytest
import torch

import metagen_plugins
from metagen_hooks import Candidate
from metagen_plugins.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=1, pad_token_id=0)
    path = tmp_path_factory.mktemp("rm")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build(entry, **context):
    registry = metagen_plugins.get_registry()
    info = registry.get("scorers", entry["name"])
    return metagen_plugins.build(info, {k: v for k, v in entry.items() if k != "name"}, context)


def test_outcome_and_process_reward_models(classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cands = [Candidate("Q: 1+2=? A:", " 1+2=3. #### 3"), Candidate("Q: 1+2=? A:", " 1+2=4. 4+1=5. #### 5")]
    orm = build({"name": "outcome_reward_model", "path": str(classifier_dir)})
    scores = orm.score("Q: 1+2=? A:", cands)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir)
    tok = AutoTokenizer.from_pretrained(classifier_dir)
    with torch.no_grad():
        expected = model(**tok("Q: 1+2=? A:" + cands[0].text, return_tensors="pt")).logits.sigmoid()[0, 0].item()
    assert scores[0] == pytest.approx(expected, abs=1e-5) and 0 < scores[1] < 1

    prm = build({"name": "process_reward_model", "path": str(classifier_dir), "aggregate": "min"})
    steps = prm.score_steps("Q: 1+2=? A:", cands)
    assert [len(s) for s in steps] == [2, 3]  # "1+2=3. ", "#### 3" / three pieces
    assert prm.score("Q: 1+2=? A:", cands) == [min(s) for s in steps]


def test_llm_judge_reads_yes_against_no(tiny):
    model, tok = tiny
    judge = build({"name": "llm_judge", "yes": "y", "no": "n"}, model=model, tokenizer=tok)
    [score] = judge.score("q: 1+1? ", [Candidate("q", "2")])
    ids = tok("q: 1+1? 2\nIs this answer correct? Answer Yes or No: ", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    y, n = tok.convert_tokens_to_ids("y"), tok.convert_tokens_to_ids("n")
    assert score == pytest.approx(torch.stack([logits[y], logits[n]]).softmax(-1)[0].item(), abs=1e-5)


def test_llm_judge_in_a_run_uses_the_host_model(tiny):
    model, tok = tiny
    result = metagen_plugins.run({"strategy": {"name": "best_of_n", "n": 3},
                                  "scorer": {"name": "llm_judge", "yes": "y", "no": "n"},
                                  "generation": {"do_sample": True, "seed": 0, "max_new_tokens": 5}},
                                 "q: ", model=model, tokenizer=tok)
    assert len(result.scores) == 3 and all(0 < s < 1 for s in result.scores)
    assert result.best.text == result.candidates[result.scores.index(max(result.scores))].text


def test_missing_reward_model_is_clear(tmp_path):
    with pytest.raises(metagen_plugins.HostError, match="the reward model = .*neither a local directory"):
        build({"name": "outcome_reward_model", "path": str(tmp_path / "none")})


def test_a_score_does_not_depend_on_what_else_is_in_the_batch(classifier_dir):
    """A left-padded row is read at its own positions: scored alone or beside a longer text, a
    candidate gets the same reward (rotary positions are relative, so
    left padding must not change it)."""
    short = Candidate("Q: 1+2=? A:", " 1+2=3. #### 3")
    long = Candidate("Q: 1+2=? A:", " 1+2=4. 4+1=5. 5+5=10. 10+10=20. #### 20")
    orm = build({"name": "outcome_reward_model", "path": str(classifier_dir)})
    orm.tokenizer.padding_side = "left"
    alone = orm.score("Q: 1+2=? A:", [short])[0]
    beside = orm.score("Q: 1+2=? A:", [short, long])[0]
    assert beside == pytest.approx(alone, abs=1e-5)


def _logprob(model, tok, text: str, prompt: str) -> float:
    """log P(text after prompt | prompt) under a causal LM, one unpadded row."""
    ids = tok(text, return_tensors="pt").input_ids
    start = len(tok(prompt).input_ids)
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(-1)
    return sum(logprobs[i - 1, ids[0, i]].item() for i in range(start, ids.shape[1]))


def test_step_likelihood_is_the_verifiers_probability_of_each_step(tiny, tiny_dir):
    """Each step's score is P(step | prompt and the steps before it) under the verifier; min, last
    and prod aggregate them, and prod is the whole text's probability."""
    model, tok = tiny
    prompt = "Q: 1+2=? A:"
    cands = [Candidate(prompt, " 1+2=3. #### 3"), Candidate(prompt, " 1+2=4. 4+1=5. #### 5")]
    verifier = build({"name": "step_likelihood", "path": str(tiny_dir)})
    steps = verifier.score_steps(prompt, cands)
    assert [len(s) for s in steps] == [2, 3]
    for cand, got in zip(cands, steps):
        pieces = cand.text.split(". ")
        texts = [". ".join(pieces[:k + 1]) + (". " if k < len(pieces) - 1 else "") for k in range(len(pieces))]
        expected = [math.exp(_logprob(model, tok, prompt + now, prompt + before))
                    for before, now in zip([""] + texts, texts)]
        assert got == pytest.approx(expected, rel=1e-4)
    assert verifier.score(prompt, cands) == [min(s) for s in steps]
    whole = build({"name": "step_likelihood", "path": str(tiny_dir), "aggregate": "prod"}).score(prompt, cands[:1])[0]
    assert whole == pytest.approx(math.exp(_logprob(model, tok, prompt + cands[0].text, prompt)), rel=1e-4)


def test_step_likelihood_does_not_depend_on_the_batch(tiny_dir):
    """Right-padded rows: a candidate scored beside a longer one gets the same step scores."""
    verifier = build({"name": "step_likelihood", "path": str(tiny_dir), "batch_size": 8})
    short = Candidate("Q: 1+2=? A:", " 1+2=3. #### 3")
    long = Candidate("Q: 1+2=? A:", " 1+2=4. 4+1=5. 5+5=10. 10+10=20. #### 20")
    alone = verifier.score_steps(short.prompt, [short])[0]
    assert verifier.score_steps(short.prompt, [long, short])[1] == pytest.approx(alone, rel=1e-5)


def test_step_likelihood_errors_name_the_parameter(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="step_likelihood: delimiter must not be empty"):
        build({"name": "step_likelihood", "path": str(tiny_dir), "delimiter": ""})
    with pytest.raises(metagen_plugins.HostError, match="the step_likelihood verifier = .*neither a local directory"):
        build({"name": "step_likelihood", "path": str(tmp_path / "none")})
