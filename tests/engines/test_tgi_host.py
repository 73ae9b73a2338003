"""The TGI host end to end over real sockets: huggingface_hub's client against the loopback TGI
stand-in (tests/fakes/tgi_server.py), which answers with TGI's recorded responses or its synthetic
arithmetic solver, and with the faults a test injects."""

import math

import pytest

import metagen_plugins
from metagen_hooks import Budget, Candidate
from metagen_plugins import ConfigError, HostError
from metagen_plugins.config import validate
from metagen_plugins.hostkit import RemoteError
from metagen_plugins.engines.tgi.host import TGIHost
from tgi_server import Fault, TGIServer, snapshot
from fixture_plugins import source

PROMPT = "Q: 37+48-19=? A:"


@pytest.fixture
def server():
    with TGIServer() as running:
        yield running
        assert running.contract_errors == []  # everything sent and answered matched TGI's OpenAPI


def config(server, host=None, **sections):
    return {"host": {"name": "tgi", "url": server.url, "retries": 2, **(host or {})},
            "generation": {"max_new_tokens": 40, "seed": 0}, **sections}


def make_host(server, host=None, **sections):
    registry = metagen_plugins.get_registry()
    made = TGIHost(validate(config(server, host, **sections), registry), registry)
    return made


def generator(host, budget=None):
    gen = host.generator(budget or Budget())
    gen.backoff = 0.01
    return gen


def test_logprobs_and_token_ids_are_parsed_from_tgis_recorded_answer(server):
    recorded = snapshot("test_flash_llama_simple")
    server.replies.append(recorded)
    [[c]] = generator(make_host(server)).sample(["Test request"], n=1, max_new_tokens=10)
    tokens = recorded["details"]["tokens"]
    assert c.text == " for /api/v1/projects/1" == recorded["generated_text"]
    assert c.token_ids == [t["id"] for t in tokens] and c.logprobs == [t["logprob"] for t in tokens]
    assert c.finish_reason == "length"


def test_components_become_tgi_request_parameters(server):
    host = make_host(server, processors=[
        {"name": "temperature", "temperature": 0.5}, {"name": "top_k", "top_k": 10},
        {"name": "top_p", "top_p": 0.9}, {"name": "typical", "mass": 0.9},
        {"name": "repetition_penalty", "penalty": 1.2}, {"name": "frequency_penalty", "penalty": 0.3},
        {"name": "watermark"}, {"name": "grammar", "regex": r" \d+"}],
        stopping=[{"name": "stop_strings", "stop": ["test"]}, {"name": "token_budget", "max_tokens": 12}])
    gen = generator(host)
    gen.sample([PROMPT], n=1, max_new_tokens=30, stop=[". "])
    path, body = server.requests[-1]
    assert path == "/" and body["inputs"] == PROMPT and "stream" not in body  # the root route: /generate
    assert body["parameters"] == {
        "temperature": 0.5, "top_k": 10, "top_p": 0.9, "typical_p": 0.9, "repetition_penalty": 1.2,
        "frequency_penalty": 0.3, "watermark": True, "grammar": {"type": "regex", "value": r" \d+"},
        "stop": ["test", ". "], "max_new_tokens": 12, "details": True, "do_sample": True, "seed": 0}


def test_greedy_unless_sampling_and_top_p_of_one_is_not_sent(server):
    gen = generator(make_host(server, processors=[{"name": "repetition_penalty", "penalty": 1.1}]))
    gen.sample([PROMPT], n=1)
    assert "do_sample" not in server.requests[-1][1]["parameters"]
    gen = generator(make_host(server, processors=[{"name": "top_p", "top_p": 1.0}]))
    gen.sample([PROMPT], n=1)
    params = server.requests[-1][1]["parameters"]
    assert "top_p" not in params and params["do_sample"] is True  # TGI rejects top_p = 1.0 with 422


def test_json_grammar_is_sent_as_tgis_json_grammar(server):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    gen = generator(make_host(server, processors=[{"name": "grammar", "json_schema": schema}]))
    gen.sample([PROMPT], n=1)
    assert server.requests[-1][1]["parameters"]["grammar"] == {"type": "json", "value": schema}


def test_lark_grammars_and_custom_watermark_keys_are_refused_before_any_request(server):
    with pytest.raises(ConfigError, match="not a Lark grammar"):
        make_host(server, processors=[{"name": "grammar", "lark": "start: /a+/"}])
    with pytest.raises(ConfigError, match="hashing_key = 7 needs an in-process host"):
        make_host(server, processors=[{"name": "watermark", "hashing_key": 7}])
    assert server.requests == []


@pytest.mark.parametrize("name,entry", [
    ("mirostat", {"name": "mirostat"}),
    ("contrastive", {"name": "contrastive", "amateur": "demo-arith-draft"}),
    ("no_repeat_ngram", {"name": "no_repeat_ngram", "ngram_size": 3}),
    ("min_p", {"name": "min_p", "min_p": 0.1}),
])
def test_components_tgi_cannot_host_fail_before_any_request_naming_where_they_run(server, name, entry):
    with pytest.raises(ConfigError) as caught:
        metagen_plugins.run(config(server, processors=[entry]), PROMPT)
    message = str(caught.value)
    assert f"logits processor {name!r}" in message and "cannot run on the tgi host; it runs on transformers" in message
    assert server.requests == []


def test_a_custom_processor_from_a_plugin_cannot_run_on_tgi(server, install_plugin):
    install_plugin("my_proc", source("halve"))
    metagen_plugins.get_registry(reload=True)
    with pytest.raises(ConfigError, match=r"logits processor 'halve' \(plugin 'my_proc'.*cannot run on the tgi host; "
                                          r"it runs on transformers"):
        metagen_plugins.run(config(server, processors=[{"name": "halve"}]), PROMPT)
    assert server.requests == []


def test_more_stop_strings_than_tgi_takes_are_enforced_over_a_stream_that_is_closed(server):
    server.token_delay = 0.02  # so the server is still writing when the client has what it needs
    stops = ["a", "b", "c", "d", "=85"]
    gen = generator(make_host(server, stopping=[{"name": "stop_strings", "stop": stops}]))
    [[c]] = gen.sample([PROMPT], n=1)
    path, body = server.requests[-1]
    assert body["stream"] is True and body["parameters"]["stop"] == stops[:4]  # the cap goes to the server
    assert c.text == " 37+48=85" and c.finish_reason == "stop_sequence"
    assert len(c.token_ids) == len(c.logprobs) == 6 and c.meta["client_stop"]
    assert c.logprobs[:5] == [-0.1] * 5 and -0.3 < c.logprobs[5] < 0 and c.token_ids[:3] == [ord(" "), 1037, ord("+")]
    [record] = server.finished_streams()
    assert record["closed_by_client"] and record["sent"] < record["total"]


def test_stream_that_ends_before_any_client_stop_keeps_everything(server):
    gen = generator(make_host(server, stopping=[{"name": "stop_strings", "stop": ["v", "w", "x", "y", "z"]}]))
    [[c]] = gen.sample([PROMPT], n=1)
    assert c.text.startswith(" 37+48=") and "####" in c.text and c.finish_reason == "eos_token"
    assert c.token_ids[-1] == 2 and len(c.token_ids) == len(c.logprobs)


def test_n_samples_are_n_concurrent_requests_bounded_by_concurrency(server):
    server.delay = 0.2
    gen = generator(make_host(server, {"concurrency": 4}))
    [cands] = gen.sample([PROMPT], n=6)
    assert len(cands) == 6 and len(server.requests) == 6
    assert server.peak == 4  # never more than [host] concurrency in flight, and that many at once
    seeds = [body["parameters"]["seed"] for _, body in server.requests]
    assert sorted(seeds) == list(range(6))  # each sample its own seed, so they differ
    assert len({c.text for c in cands}) > 1


def test_timeout_is_classified_and_retried(server):
    server.faults = [Fault(delay=1.0), Fault(delay=1.0)]
    gen = generator(make_host(server, {"timeout": 0.2, "retries": 1}))
    with pytest.raises(RemoteError, match=r"timeout.*\(after 2 attempts\)"):
        gen.sample([PROMPT], n=1)


def test_server_errors_are_retried_then_succeed(server):
    server.faults = [Fault(status=500, error="CUDA error", error_type="incomplete_generation"),
                     Fault(status=503, page=b"<html>Service Unavailable</html>")]
    gen = generator(make_host(server))
    [[c]] = gen.sample([PROMPT], n=1)
    assert "####" in c.text and len(server.requests) == 3 and gen.failures == []


def test_rate_limit_waits_for_retry_after_then_succeeds(server):
    server.faults = [Fault(status=429, error="Model is overloaded", error_type="overloaded",
                           headers={"Retry-After": "0.3"})]
    gen = generator(make_host(server))
    [[c]] = gen.sample([PROMPT], n=1)
    assert "####" in c.text and len(server.requests) == 2
    assert server.gaps()[0] >= 0.3  # the retry came after the server's Retry-After


def test_validation_error_is_not_retried_and_shows_tgis_message(server):
    server.info["max_stop_sequences"] = 2  # a deployment launched with --max-stop-sequences 2
    gen = generator(make_host(server, stopping=[{"name": "stop_strings", "stop": ["a", "b", "c"]}]))
    with pytest.raises(RemoteError, match=r"invalid: `stop` supports up to 2 stop sequences. Given: 3") \
            as caught:
        gen.sample([PROMPT], n=1)
    assert len(server.requests) == 1 and caught.value.failures[0]["status"] == 422


def test_connection_refused_is_a_connection_failure():
    cfg = validate({"host": {"name": "tgi", "url": "http://127.0.0.1:9", "retries": 0}}, metagen_plugins.get_registry())
    gen = TGIHost(cfg, metagen_plugins.get_registry()).generator(Budget())
    with pytest.raises(RemoteError, match="connection: ConnectError"):
        gen.sample([PROMPT], n=1)


def test_malformed_json_is_a_protocol_failure_and_not_retried(server):
    server.faults = [Fault(malformed=True)]
    gen = generator(make_host(server))
    with pytest.raises(RemoteError, match=r"protocol: malformed answer \(JSONDecodeError"):
        gen.sample([PROMPT], n=1)
    assert len(server.requests) == 1


def test_partial_failure_keeps_the_successes_and_the_result_says_what_failed(server):
    server.faults = [Fault(), Fault(status=422, error="Input validation error: `inputs` tokens + "
                                    "`max_new_tokens` must be <= 2048", error_type="validation"), Fault()]
    result = metagen_plugins.run(config(server, {"concurrency": 1}, strategy={"name": "self_consistency", "n": 3}),
                                 PROMPT)
    assert len(result.candidates) == 2 and result.best is not None
    assert result.failures == [{"prompt": PROMPT, "samples": 1, "kind": "invalid", "status": 422,
                                "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048",
                                "url": server.url}]
    assert result.budget.samples == 2


def test_extend_continues_the_text_and_keeps_token_alignment(server):
    gen = generator(make_host(server))
    [[step]] = gen.sample([PROMPT], n=1, stop=[". "])
    assert step.text == " 37+48=85. " and step.finish_reason == "stop_sequence"
    [[done]] = gen.extend([step], n=1)
    assert server.requests[-1][1]["inputs"] == PROMPT + " 37+48=85. "
    assert done.text.startswith(" 37+48=85. 85-19=") and "####" in done.text
    assert done.token_ids[:len(step.token_ids)] == step.token_ids and len(done.token_ids) == len(done.logprobs)
    [[typed]] = gen.extend([Candidate(prompt=PROMPT, text=" 37+48=85. ")], n=1)
    assert typed.token_ids == [] and typed.logprobs == []  # the typed prefix's tokens are unknown


def test_best_of_uses_tgis_mean_logprob_selection(server):
    gen = generator(make_host(server, {"best_of": 2}, generation={"do_sample": True, "seed": 3}))
    [[c]] = gen.sample([PROMPT], n=1)
    params = server.requests[-1][1]["parameters"]
    assert params["best_of"] == 2 and "seed" not in params  # TGI forbids a seed with best_of
    assert c.meta["best_of"] == 2
    assert gen.budget.tokens_generated > len(c.token_ids)  # the discarded candidate's tokens count too


def test_best_of_with_more_stops_than_tgi_takes_cuts_the_text_client_side(server):
    stops = ["a", "b", "c", "d", ". "]
    gen = generator(make_host(server, {"best_of": 2}, generation={"do_sample": True},
                              stopping=[{"name": "stop_strings", "stop": stops}]))
    [[c]] = gen.sample([PROMPT], n=1)
    assert "stream" not in server.requests[-1][1]  # TGI cannot stream best_of
    assert c.text == " 37+48=85. " and c.finish_reason == "stop_sequence" and len(c.token_ids) == len(c.logprobs)


@pytest.mark.parametrize("host,generation,match", [
    ({"best_of": 3}, {"do_sample": True}, r"best_of = 3 exceeds the deployment's --max-best-of \(2\)"),
    ({"best_of": 2}, {}, "needs sampling"),
    ({"top_n_tokens": 6}, {}, r"exceeds the deployment's --max-top-n-tokens \(5\)"),
    ({"kv_cache": "int8"}, {}, "TGI accepts fp8_e4m3fn or fp8_e5m2"),
    ({"quantize": "hqq"}, {}, "TGI accepts awq, compressed-tensors"),
    ({"draft_model": "demo-arith-draft"}, {}, "no separate draft model.*Medusa.*vLLM host"),
])
def test_settings_tgi_cannot_serve_are_rejected_before_any_request(server, host, generation, match):
    with pytest.raises(HostError, match=match):
        metagen_plugins.run(config(server, host, generation=generation), PROMPT)
    assert server.requests == []


def test_streamed_requests_return_top_tokens_too(server):
    gen = generator(make_host(server, {"top_n_tokens": 2},
                              stopping=[{"name": "stop_strings", "stop": ["v", "w", "x", "y", "=85"]}]))
    [[c]] = gen.sample([PROMPT], n=1)
    assert server.requests[-1][1]["stream"] is True and server.requests[-1][1]["parameters"]["top_n_tokens"] == 2
    assert len(c.meta["top_tokens"]) == len(c.token_ids) and c.meta["top_tokens"][0][0]["id"] == c.token_ids[0]


def test_top_n_tokens_and_prompt_logprobs_are_returned_in_meta(server):
    gen = generator(make_host(server, {"top_n_tokens": 3, "prompt_logprobs": True}))
    [[c]] = gen.sample([PROMPT], n=1)
    params = server.requests[-1][1]["parameters"]
    assert params["top_n_tokens"] == 3 and params["decoder_input_details"] is True
    assert len(c.meta["top_tokens"]) == len(c.token_ids) and all(len(row) == 3 for row in c.meta["top_tokens"])
    first, *rest = c.meta["prompt_logprobs"]
    assert math.isnan(first) and rest and all(x == -1.5 for x in rest)  # TGI gives the first prompt token none
    assert gen.budget.prompt_tokens_computed == len(c.meta["prompt_logprobs"])


def test_the_components_the_issue_names_declare_a_tgi_realisation():
    registry = metagen_plugins.get_registry()
    for kind, names in {"logits_processors": ["temperature", "top_k", "top_p", "typical", "repetition_penalty",
                                              "frequency_penalty", "watermark", "grammar"],
                        "stopping_criteria": ["stop_strings", "token_budget"]}.items():
        for name in names:
            assert "tgi" in registry.get(kind, name).hosts, name
    for name in ("mirostat", "contrastive", "min_p", "epsilon", "eta", "no_repeat_ngram", "logit_bias"):
        assert "tgi" not in registry.get("logits_processors", name).hosts, name


def test_watermark_on_the_transformers_host_is_transformers_own_processor(tiny):
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    from metagen_plugins.config import build

    model, _ = tiny
    info = metagen_plugins.get_registry().get("logits_processors", "watermark")
    made = build(info, {"greenlist_ratio": 0.5, "bias": 1.0}, context={"model": model})
    assert isinstance(made, WatermarkLogitsProcessor)
    assert made.greenlist_size == int(0.5 * model.config.vocab_size) and made.bias == 1.0
    with pytest.raises(ConfigError, match=r"greenlist_ratio must be in \(0, 1\)"):
        build(info, {"greenlist_ratio": 1.5}, context={"model": model})


def test_plain_decoding_streams_token_by_token_and_adds_up_to_the_answer(server):
    """on_text: each token's text as /generate_stream sends it; the pieces are the candidate's
    text, and the answer equals the one a plain request gets."""
    server.token_delay = 0.01
    host = make_host(server)
    try:
        pieces: list[str] = []
        [[streamed]] = host.generator(Budget(), on_text=pieces.append).sample([PROMPT], n=1)
        assert server.requests[-1][1]["stream"] is True and host.streams
        [[whole]] = generator(host).sample([PROMPT], n=1)
    finally:
        host.close()
    assert len(pieces) > 1 and "".join(pieces) == streamed.text == whole.text
    assert streamed.token_ids == whole.token_ids and streamed.logprobs == whole.logprobs
