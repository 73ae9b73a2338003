"""The openai host: offline (request bodies, answers, refusals) and end to end against a real
OpenAI-compatible server, vLLM's, started on 127.0.0.1 from the vLLM environment (.venv-vllm)."""

from __future__ import annotations

import pytest

import metagen_plugins
from metagen_plugins.errors import ConfigError, HostError
from metagen_openai.host import OpenAIHost, samples
# the repository's one helper that starts a vLLM server (the repository root is on sys.path
# through pytest's `pythonpath`, in pyproject.toml)
from tests.fakes.vllm_server import DEMO, VLLM_PYTHON, ServerFailed, VLLMServer, available

PROMPT = "Q: 37+48-19=? A:"


def host(**sections) -> OpenAIHost:
    settings = {"name": "openai", "url": "http://127.0.0.1:9/v1", "model": "m", **sections.pop("host", {})}
    registry = metagen_plugins.get_registry()
    return OpenAIHost(metagen_plugins.validate({"host": settings, **sections}, registry), registry)


def test_the_plugin_registers_a_host_through_the_hook():
    registry = metagen_plugins.get_registry()
    info = registry.host("openai")
    assert (info.plugin, info.distribution, info.realiser, info.fallback) == ("openai", "metagen-openai", "openai",
                                                                              ("vllm",))
    assert info.capabilities.stop_strings and not info.capabilities.in_process
    with pytest.raises(ConfigError, match=r"has no setting 'extension'; did you mean 'extensions'"):
        metagen_plugins.validate({"host": {"name": "openai", "extension": ["top_k"]}}, registry)


def test_request_body_has_only_openai_parameters_and_listed_extensions():
    made = host(processors=[{"name": "temperature", "temperature": 0.7}, {"name": "top_p", "top_p": 0.9}],
                stopping=[{"name": "stop_strings", "stop": ["\n\n"]}])
    try:
        body = made.request_body("hi", 3, 40, ["Q:"], 7)
        assert body == {"prompt": "hi", "n": 3, "max_tokens": 40, "model": "m",  # nothing reads log-probs
                        "temperature": 0.7, "top_p": 0.9, "stop": ["\n\n", "Q:"], "seed": 7}
        assert made.url == "http://127.0.0.1:9/v1" and made.path(made.url) == "completions"
        assert made.path("http://127.0.0.1:9") == "v1/completions"  # the same route either way
    finally:
        made.close()
    greedy = host(host={"logprobs": True, "extensions": ["return_token_ids"]})
    try:
        body = greedy.request_body("hi", 1, 8, [], None)
        assert body["temperature"] == 0.0 and body["logprobs"] == 1 and body["return_token_ids"] is True
    finally:
        greedy.close()


@pytest.mark.parametrize("processor, message", [
    ({"name": "min_p", "min_p": 0.1}, r"request parameter\(s\) min_p, which are not part of the OpenAI "
                                      r"completions API.*extensions = \['min_p'\]"),
    ({"name": "mirostat"}, "runs inside a vLLM server through the metagen-vllm plugin"),
])
def test_a_component_the_server_may_not_take_is_refused_before_any_request(processor, message):
    with pytest.raises(HostError, match=message):
        host(processors=[processor])


def test_a_listed_extension_is_sent():
    made = host(host={"extensions": ["min_p"]}, processors=[{"name": "min_p", "min_p": 0.1}])
    try:
        assert made.request_body("hi", 1, 8, [], None)["min_p"] == 0.1
    finally:
        made.close()


def test_answers_with_and_without_token_ids():
    with_ids = {"choices": [{"index": 1, "text": " b", "finish_reason": "length", "token_ids": [5, 6],
                             "logprobs": {"token_logprobs": [-0.5, -1.0]}},
                            {"index": 0, "text": " a", "finish_reason": "stop", "stop_reason": None,
                             "token_ids": [3, 2], "logprobs": {"token_logprobs": [-0.1, -0.2]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4,
                          "prompt_tokens_details": {"cached_tokens": 8}}}
    first, second = samples(with_ids, 2)
    assert (first.text, first.token_ids, first.logprobs) == (" a", [3], [-0.1])  # the EOS is dropped
    assert (second.token_ids, second.logprobs, second.finish_reason) == ([5, 6], [-0.5, -1.0], "length")
    assert (first.prompt_tokens, first.prompt_tokens_reused) == (2, 8)
    plain = {"choices": [{"index": 0, "text": " 66", "finish_reason": "stop",
                          "logprobs": {"token_logprobs": [-0.3, -0.4]}}], "usage": {"completion_tokens": 2}}
    [only] = samples(plain, 1)
    assert only.token_ids == [] and only.logprobs == [] and only.meta["logprobs"] == [-0.3, -0.4]
    assert only.completion_tokens == 2
    with pytest.raises(ValueError, match="asked for 2 choices, got 1"):
        samples(plain, 2)


# -- end to end, against vLLM's OpenAI-compatible server -------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """vLLM's server for the demo model (the command `metagen vllm serve-args` prints), in its own
    process group, stopped at the end by killing that group (tests/fakes/vllm_server.py)."""
    if not available():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it")
    started = VLLMServer(DEMO, tmp_path_factory.mktemp("openai-host") / "vllm.log")
    try:
        started.wait()
    except ServerFailed as failed:
        pytest.fail(str(failed))
    with started:
        yield started.url


def config(url: str, **sections) -> dict:
    return {"host": {"name": "openai", "url": url + "/v1", "model": "demo-arith", **sections.pop("host", {})},
            "generation": {"max_new_tokens": 40, **sections.pop("generation", {})}, **sections}


@pytest.mark.slow
def test_greedy_text_matches_the_vllm_host_on_the_same_server(server):
    vllm = metagen_plugins.run({"host": {"name": "vllm", "url": server, "model": "demo-arith", "logprobs": True},
                                "generation": {"max_new_tokens": 40}}, PROMPT)
    plain = metagen_plugins.run(config(server, host={"logprobs": True}), PROMPT)
    assert plain.best.text == vllm.best.text and "####" in plain.best.text
    # a server without token ids: the log-probs stay beside the text, not on the candidate
    assert plain.best.token_ids == [] and plain.best.logprobs == [] and plain.best.meta["logprobs"]
    ids = metagen_plugins.run(config(server, host={"extensions": ["return_token_ids"], "logprobs": True}), PROMPT)
    assert ids.best.token_ids == vllm.best.token_ids
    assert ids.best.logprobs == pytest.approx(vllm.best.logprobs, abs=1e-4)
    assert ids.budget.tokens_generated == vllm.budget.tokens_generated > 0


@pytest.mark.slow
def test_a_sampling_strategy_and_what_a_server_without_logprobs_loses(server):
    sections = {"processors": [{"name": "temperature", "temperature": 0.8}],
                "strategy": {"name": "best_of_n", "n": 4}, "scorer": {"name": "logprob"},
                "generation": {"seed": 3}}
    with_logprobs = metagen_plugins.run(config(server, host={"extensions": ["return_token_ids"],
                                                             "samples_per_request": 4}, **sections), PROMPT)
    assert len(with_logprobs.candidates) == 4 and with_logprobs.budget.samples == 4
    assert all(s < 0 for s in with_logprobs.scores)  # the logprob scorer reads real log-probs
    # a server without log-probs: the logprob scorer has nothing to score with and says so (it
    # does not pick blindly)
    without = metagen_plugins.run(config(server, host={"logprobs": False}, **sections), [PROMPT])[0]
    assert metagen_plugins.failed(without)
    assert "scorer 'logprob'" in without.failures[0]["error"] and "logprobs = true" in without.failures[0]["error"]


@pytest.mark.slow
def test_a_listed_extension_reaches_the_server_and_a_bad_request_fails_alone(server):
    banned = metagen_plugins.run(config(server, host={"extensions": ["top_k"]},
                                        processors=[{"name": "top_k", "top_k": 1}],
                                        generation={"do_sample": True, "seed": 1}), PROMPT)
    greedy = metagen_plugins.run(config(server), PROMPT)
    assert banned.best.text == greedy.best.text  # top_k = 1 sampling is greedy: the server applied it
    results = metagen_plugins.run(config(server, host={"model": "no-such-model", "retries": 0}), [PROMPT, PROMPT])
    assert all(metagen_plugins.failed(r) for r in results)
    assert "no-such-model" in results[0].failures[0]["error"]
