"""The plugin inside vLLM's logits-processor interface, driven the way vLLM's engine drives it
(BatchUpdate in, logits rows through apply()), without starting a server;
tests/engines/vllm/test_host.py runs it in a real one. Runs in the environment that has vLLM
(make test builds .venv-vllm)."""

import json
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed in this environment (make test runs these in .venv-vllm)")
torch = pytest.importorskip("torch")

from vllm import SamplingParams  # noqa: E402
from vllm.entrypoints.openai.completion.protocol import CompletionRequest  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402

from metagen_plugins.models import resolve  # noqa: E402
from metagen_vllm import XARG, MetagenLogitsProcessor, configuration, parse  # noqa: E402

DEMO = resolve("demo-arith")
VOCAB = 24
EOS = 2


def xargs(*entries):
    return {XARG: json.dumps(list(entries))}


@pytest.fixture
def processor():
    config = SimpleNamespace(model_config=SimpleNamespace(
        tokenizer=DEMO, tokenizer_revision=None, trust_remote_code=False,
        hf_config=SimpleNamespace(eos_token_id=EOS)))
    return MetagenLogitsProcessor(config, torch.device("cpu"), False)


def add(processor, index, extra_args, prompt, output):
    params = SamplingParams(extra_args=extra_args)
    processor.update_state(BatchUpdate(batch_size=index + 1, removed=[], moved=[],
                                       added=[(index, params, prompt, output)]))


def test_vllm_xargs_shape_survives_the_openai_request_model():
    """vLLM's request model takes flat values only: a JSON string passes, a nested list of
    tables does not, which is why the wire format is a string."""
    entries = [{"section": "processors", "name": "bad_words", "bad_words_ids": [[5]]}]
    request = CompletionRequest(prompt="x", vllm_xargs={XARG: json.dumps(entries)})
    assert parse(request.to_sampling_params(8).extra_args) == entries
    with pytest.raises(ValueError):
        CompletionRequest(prompt="x", vllm_xargs={XARG: entries})


def test_parse_rejects_malformed_values_with_the_expected_shape():
    assert parse(None) is None and parse({"other": 1}) is None
    with pytest.raises(ValueError, match="not valid JSON"):
        parse({XARG: "[{"})
    with pytest.raises(ValueError, match='"section": "processors" | "stopping"'):
        parse({XARG: json.dumps([{"name": "bad_words"}])})
    assert configuration([{"section": "stopping", "name": "regex", "pattern": "x"}]) == {
        "processors": [], "stopping": [{"name": "regex", "pattern": "x"}]}


def test_validate_params_names_the_component_and_parameter():
    params = SamplingParams(extra_args=xargs({"section": "processors", "name": "mirostat", "target": -1.0}))
    with pytest.raises(ValueError, match=r"mirostat.*target surprise must be > 0"):
        MetagenLogitsProcessor.validate_params(params)
    params = SamplingParams(extra_args=xargs({"section": "processors", "name": "bad_wordz", "bad_words_ids": []}))
    with pytest.raises(ValueError, match="Did you mean 'bad_words'"):
        MetagenLogitsProcessor.validate_params(params)
    MetagenLogitsProcessor.validate_params(SamplingParams())  # no metagen components: nothing to check


def test_processor_runs_on_its_own_row_only(processor):
    add(processor, 0, xargs({"section": "processors", "name": "bad_words", "bad_words_ids": [[7]]}), [1, 5], [])
    add(processor, 1, None, [1, 5], [])  # a request without metagen components
    logits = torch.zeros(2, VOCAB)
    out = processor.apply(logits)
    assert out[0, 7] == float("-inf") and torch.isfinite(out[0, :7]).all()
    assert torch.isfinite(out[1]).all()
    assert not processor.is_argmax_invariant()


def test_processor_sees_the_output_as_it_grows(processor):
    """vLLM hands the adapter a reference to the request's output list; the row is rebuilt
    from prompt + output at every step, as generate() would pass input_ids."""
    output: list[int] = []
    entry = {"section": "processors", "name": "no_repeat_ngram", "ngram_size": 2}
    add(processor, 0, xargs(entry), [1, 9, 9], output)
    logits = torch.zeros(1, VOCAB)
    out = processor.apply(logits.clone())  # "9 9" seen: 9 may not follow 9 again
    assert out[0, 9] == float("-inf") and torch.isfinite(out[0, 4])
    output += [4, 9]  # vLLM appends to the same list: now "9 4" was seen too
    out = processor.apply(logits.clone())
    assert out[0, 4] == float("-inf") and out[0, 9] == float("-inf")


def test_stopping_criterion_ends_the_row_with_eos(processor):
    output: list[int] = []
    add(processor, 0, xargs({"section": "stopping", "name": "regex", "pattern": "5"}), [1, 21], output)
    logits = torch.zeros(1, VOCAB)
    assert torch.isfinite(processor.apply(logits.clone())).all()  # nothing generated yet
    tok = processor.tokenizer
    output.append(tok.convert_tokens_to_ids("4"))
    assert torch.isfinite(processor.apply(logits.clone())).all()
    output.append(tok.convert_tokens_to_ids("5"))
    out = processor.apply(logits.clone())
    assert out[0].argmax().item() == EOS and torch.isinf(out[0]).sum() == VOCAB - 1


def test_a_component_that_fails_to_build_ends_its_request_instead_of_the_engine(processor):
    """Building happens in the engine loop, where an exception would stop the server: the
    request ends at once (the cause is logged) and the engine keeps going."""
    add(processor, 0, xargs({"section": "processors", "name": "contrastive", "amateur": "/nonexistent"}), [1], [])
    out = processor.apply(torch.zeros(1, VOCAB))
    assert out[0].argmax().item() == EOS


def test_removed_requests_drop_their_components(processor):
    add(processor, 0, xargs({"section": "processors", "name": "bad_words", "bad_words_ids": [[7]]}), [1], [])
    processor.update_state(BatchUpdate(batch_size=0, removed=[0], moved=[], added=[]))
    assert torch.isfinite(processor.apply(torch.zeros(1, VOCAB))).all()


@pytest.mark.parametrize("processors, stopping", [
    ([{"name": "temperature", "temperature": 0.7}, {"name": "top_k", "top_k": 5}, {"name": "top_p", "top_p": 0.9},
      {"name": "min_p", "min_p": 0.05}, {"name": "repetition_penalty", "penalty": 1.2},
      {"name": "frequency_penalty", "penalty": 0.5}, {"name": "presence_penalty", "penalty": 0.25},
      {"name": "logit_bias", "bias": {"7": -5.0}}, {"name": "mirostat", "target": 2.0}],
     [{"name": "stop_strings", "stop": ["."]}, {"name": "token_budget", "max_tokens": 9},
      {"name": "answer_complete"}]),
    ([{"name": "grammar", "json_schema": {"type": "object"}}], [{"name": "step_delimiter"}]),
    ([{"name": "grammar", "regex": "[0-9]+"}], []),
])
def test_the_host_request_body_is_what_vllm_expects(processors, stopping):
    """Contract: every field the vLLM host sends is one of vLLM's own request fields, and the
    sampling parameters vLLM derives from it carry the configured values."""
    import metagen_plugins
    from metagen_plugins.engines.vllm.host import VLLMHost

    registry = metagen_plugins.get_registry()

    def make_body(**settings):
        config = metagen_plugins.validate({"host": {"name": "vllm", "url": "http://127.0.0.1:9", "model": "m",
                                                    **settings},
                                           "processors": processors, "stopping": stopping}, registry)
        host = VLLMHost(config, registry)
        try:
            n = 2 if host.sampling else 1  # the host never sends greedy n > 1 (vLLM rejects it)
            return host.request_body("Q", n, 16, ["\n"], 3), n
        finally:
            host.close()

    body, n = make_body()
    request = CompletionRequest(**body)
    assert not request.model_extra, f"fields vLLM does not know: {sorted(request.model_extra)}"
    params = request.to_sampling_params(body["max_tokens"])
    # nothing in this run reads log-probabilities, so none are asked for; [host] logprobs = true asks
    assert params.n == n and params.seed == 3 and params.logprobs is None
    asked, _ = make_body(logprobs=True)
    assert CompletionRequest(**asked).to_sampling_params(asked["max_tokens"]).logprobs == 0
    if processors[0]["name"] == "temperature":
        assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0.7, 5, 0.9, 0.05)
        assert (params.repetition_penalty, params.frequency_penalty, params.presence_penalty) == (1.2, 0.5, 0.25)
        assert params.logit_bias == {7: -5.0} and params.max_tokens == 9 and params.stop == [".", "\n"]
        assert [e["name"] for e in parse(params.extra_args)] == ["mirostat", "answer_complete"]
        MetagenLogitsProcessor.validate_params(params)
    else:
        assert params.structured_outputs is not None and params.extra_args is None
