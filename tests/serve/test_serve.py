"""metagen serve: the official ``openai`` client against a real server on loopback (uvicorn in
a thread, the demo model), refinement and caps, bad bodies, auth, back-pressure, disconnects,
plugin faults, and a vLLM backend killed and frozen mid-run."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

import openai
from hypothesis import HealthCheck, given, settings, strategies as st

import metagen_plugins
from metagen_plugins.serve import build_app
from metagen_plugins.serve.schemas import ChatRequest, CompletionRequest
from serve_helpers import LoopbackServer
from fixture_plugins import source

PROMPT = "Q: 37+48-19=? A:"
DEMO = """
[host]
model = "demo-arith"

[generation]
max_new_tokens = 32
seed = 0

[[processors]]
name = "temperature"
temperature = 0.8

[strategy]
name = "self_consistency"
n = 4
"""
PROFILES = """
[profiles.vote.host]
model = "demo-arith"
[profiles.vote.generation]
max_new_tokens = 32
seed = 0
[[profiles.vote.processors]]
name = "temperature"
temperature = 0.8
[profiles.vote.strategy]
name = "self_consistency"
n = 4
[profiles.vote.budget]
max_samples = 8

[profiles.greedy.host]
model = "demo-arith"
[profiles.greedy.generation]
max_new_tokens = 32
"""


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "demo.toml"
    path.write_text(DEMO)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "profiles.toml"
    path.write_text(PROFILES)
    with LoopbackServer(build_app(path, max_body_bytes=64 * 1024)) as running:
        yield running


def metric(running, name: str, **labels) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    client = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    client.request("GET", "/metrics", headers={"Authorization": "Bearer " + getattr(running, "key", "")})
    text = client.getresponse().read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = line[len(name) + 1: line.index("}")]
            if ",".join(sorted(got.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def post(running, path: str, body: bytes, headers: dict | None = None, timeout: float = 30):
    """A raw POST (any bytes); returns (status, headers, parsed JSON or text)."""
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=timeout)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    answer = connection.getresponse()
    data = answer.read().decode("utf-8", "replace")
    try:
        data = json.loads(data)
    except ValueError:
        pass
    return answer.status, dict(answer.getheaders()), data


# -- the answers are metagen run's ------------------------------------------------------------

def test_a_run_config_is_one_profile_and_answers_equal_metagen_run(demo_file):
    expected = metagen_plugins.run(str(demo_file), PROMPT)
    with LoopbackServer(build_app(demo_file)) as running:
        client = running.client()
        assert [m.id for m in client.models.list()] == ["demo"]
        chat = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPT}])
        text = client.completions.create(model="demo", prompt=PROMPT)
        streamed = list(client.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPT}],
                                                       stream=True, stream_options={"include_usage": True}))
        streamed_text = list(client.completions.create(model="demo", prompt=PROMPT, stream=True))
    assert chat.choices[0].message.content == expected.best.text
    assert text.choices[0].text == expected.best.text
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected.best.text
    assert "".join(c.choices[0].text for c in streamed_text) == expected.best.text
    assert streamed[-2].choices[0].finish_reason == chat.choices[0].finish_reason == expected.best.finish_reason
    # usage counts every candidate's tokens; cached prompt tokens as cached
    spent = expected.budget
    for usage in (chat.usage, text.usage, streamed[-1].usage):
        assert usage.completion_tokens == spent.tokens_generated > len(expected.best.token_ids)
        assert usage.prompt_tokens == spent.prompt_tokens_computed + spent.prompt_tokens_reused
        # the server's host keeps one prefix cache for every request: from the second request of
        # the same prompt on, its whole prefix is cached, beyond what one fresh run reuses
        assert usage.prompt_tokens_details.cached_tokens >= spent.prompt_tokens_reused > 0
    ext = chat.model_extra["metagen"]
    assert ext["strategy"] == "self_consistency" and ext["num_candidates"] == 4
    assert ext["selection"]["votes"] == expected.trace[-1]["votes"]
    assert ext["trace_id"] == chat.id and ext["budget"]["samples"] == 4
    assert streamed[-2].model_extra["metagen"]["selection"] == ext["selection"]


def test_profiles_table_shares_one_host_and_requests_refine_it(server):
    client = server.client()
    assert sorted(m.id for m in client.models.list()) == ["greedy", "vote"]
    assert len(server.app.state.server.runners.lanes) == 1  # equal [host] tables: one model loaded
    greedy = client.completions.create(model="greedy", prompt=PROMPT)
    expected = metagen_plugins.run({"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 32}}, PROMPT)
    assert greedy.choices[0].text == expected.best.text
    # refinement: the strategy's n, a seed, the candidates themselves
    refined = client.completions.create(model="vote", prompt=PROMPT, seed=7,
                                        extra_body={"metagen": {"strategy": {"n": 3}, "candidates": True}})
    ext = refined.model_extra["metagen"]
    assert ext["num_candidates"] == 3 and len(ext["candidates"]) == 3
    assert sum(c["chosen"] for c in ext["candidates"]) == 1
    same = metagen_plugins.run({"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 32, "seed": 7},
                                "processors": [{"name": "temperature", "temperature": 0.8}],
                                "strategy": {"name": "self_consistency", "n": 3}}, PROMPT)
    assert refined.choices[0].text == same.best.text
    assert [c["text"] for c in ext["candidates"]] == [c.text for c in same.candidates]
    # the trace id finds the run's trace
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", f"/v1/metagen/traces/{ext['trace_id']}")
    trace = json.loads(connection.getresponse().read())
    assert trace["results"][0]["candidates"][0]["text"] == same.candidates[0].text


@pytest.mark.parametrize("extra, param, words", [
    ({"metagen": {"strategy": {"name": "self_consistensy"}}}, "metagen.strategy.name", "did you mean 'self_consistency'"),
    ({"metagen": {"strategy": {"n": "four"}}}, "metagen", "parameter 'n' must be int"),
    ({"metagen": {"budget": {"max_samples": 9}}}, "metagen.budget.max_samples", "cap of 8 samples"),
    ({"metagen": {"budget": {"max_tokens": 10**9}}}, "metagen.budget.max_tokens", "cap of 65536 tokens"),
    ({"metagen": {"host": {"model": "/tmp"}}}, "metagen.host", "the host and [run] are the server's"),
    ({"metagen": {"scorer": {"name": "outcome_reward_model", "path": "demo-arith-prm"}}}, "metagen.scorer.name",
     "is not offered by model 'vote'"),
    ({"metagen": {"scorer": {"name": "code_tests", "tests_file": "/etc/passwd"}}}, "metagen.scorer.name",
     "is not offered by model 'vote'"),
    ({"metagen": {"strategy": {"max_new_tokens": 8, "template": "{prompt.__class__}"}}}, "metagen.strategy.template",
     "from the server's operator only"),
    ({"n": 3}, "n", "one chosen completion"),
    ({"logprobs": 2}, "logprobs", "not supported"),
    # a section of the wrong type beside an OpenAI field (found by the hypothesis test: was a 500)
    ({"metagen": {"processors": 1}, "temperature": 0.5}, "metagen", "[[processors]]"),
    ({"metagen": {"generation": 5}, "seed": 1}, "metagen", "[generation]"),
])
def test_bad_refinements_are_400_before_any_generation(server, extra, param, words):
    client = server.client()
    before = metric(server, "metagen_samples_total", profile="vote")
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="vote", prompt=PROMPT, extra_body=extra)
    error = caught.value.body
    assert words in error["message"] and error["param"] == param and error["type"] == "invalid_request_error"
    assert metric(server, "metagen_samples_total", profile="vote") == before


def test_langchain_chat_model_as_the_docs_show_it(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(base_url=server.url + "/v1", api_key="none", model="vote", max_retries=0,
                                      extra_body={"metagen": {"strategy": {"n": 2}}})
    message = llm.invoke(PROMPT)
    expected = metagen_plugins.run({"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 32, "seed": 0},
                                    "processors": [{"name": "temperature", "temperature": 0.8}],
                                    "strategy": {"name": "self_consistency", "n": 2}}, PROMPT)
    assert message.content == expected.best.text
    assert message.usage_metadata["output_tokens"] == expected.budget.tokens_generated


def test_unknown_model_is_404_naming_the_profiles(server):
    with pytest.raises(openai.NotFoundError, match="the models \\(profiles\\) are greedy, vote"):
        server.client().chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_a_conversation_needs_a_chat_template_which_the_demo_model_lacks(server):
    with pytest.raises(openai.BadRequestError, match="chat template, which is off here"):
        server.client().chat.completions.create(model="greedy", messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}])


def test_metrics_count_requests_tokens_and_latency(server):
    before = metric(server, "metagen_tokens_generated_total", profile="greedy")
    server.client().completions.create(model="greedy", prompt="Q: 1+2=? A:")
    assert metric(server, "metagen_tokens_generated_total", profile="greedy") > before
    assert metric(server, "metagen_requests_total", route="completions", profile="greedy", status="200") >= 1
    assert metric(server, "metagen_request_latency_seconds_count", profile="greedy", strategy="generate") >= 1
    assert metric(server, "metagen_requests_in_flight", profile="greedy") == 0


# -- bad input: always a 4xx with a message ----------------------------------------------------

VALID = {"/v1/completions": {"model": "greedy", "prompt": PROMPT, "max_tokens": 4},
         "/v1/chat/completions": {"model": "greedy", "messages": [{"role": "user", "content": PROMPT}],
                                  "max_tokens": 4}}
FIELDS = set(ChatRequest.model_fields) | set(CompletionRequest.model_fields)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)
WRONG = {  # a field and values it must refuse
    "model": st.integers() | st.none() | st.just("") | st.just("no-such-profile"),
    "max_tokens": st.integers(max_value=0) | st.text(max_size=3) | st.floats(allow_nan=False),
    "n": st.integers(min_value=2) | st.integers(max_value=0),
    "temperature": st.floats(min_value=2.001, allow_infinity=True) | st.floats(max_value=-0.001) | st.text(max_size=3),
    "stream": st.integers() | st.text(max_size=3),
    "stop": st.integers() | st.lists(st.integers(), min_size=1) | st.lists(st.just("x"), min_size=17, max_size=20),
    "seed": st.integers(max_value=-1) | st.floats(allow_nan=False),
    "metagen": st.integers() | st.text(max_size=3) | st.lists(JSON, max_size=2)
               | st.dictionaries(st.sampled_from(["host", "run", "models", "plugins_dir"]), JSON, min_size=1)
               | st.builds(lambda k, v: {"budget": {k: v}}, st.sampled_from(["max_tokens", "max_samples"]),
                           st.integers(max_value=-1) | st.integers(min_value=10**6) | st.text(max_size=3))
               | st.builds(lambda v: {"budget": {"max_flops": v}}, st.floats(max_value=-1) | st.text(max_size=3))
               | st.builds(lambda v: {"strategy": {"name": "self_consistency", "n": v}}, st.integers(max_value=0)
                           | st.text(max_size=3))
               | st.builds(lambda v: {"processors": v}, st.integers() | st.lists(st.text(max_size=4), min_size=1)),
}
WRONG_PROMPT = {
    "/v1/completions": ("prompt", st.integers() | st.none() | st.just([]) | st.lists(st.integers(), min_size=1)
                        | st.just(" ") | st.lists(st.just("Q"), min_size=65, max_size=70)),
    "/v1/chat/completions": ("messages", st.just([]) | st.lists(st.integers(), min_size=1)
                             | st.just([{"role": "robot", "content": "x"}]) | st.just([{"role": "user", "content": 5}])
                             | st.just([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])),
}


def not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return True
    return False


def bodies(route: str):
    valid = VALID[route]
    field, wrong_prompt = WRONG_PROMPT[route]
    return st.one_of(
        st.builds(lambda f, data: json.dumps({**valid, f: data.draw(WRONG[f])}).encode(),
                  st.sampled_from(sorted(WRONG)), st.data()),
        wrong_prompt.map(lambda v: json.dumps({**valid, field: v}).encode()),
        st.builds(lambda k, v: json.dumps({**valid, k: v}).encode(),
                  st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS), JSON),  # unknown fields
        st.binary(min_size=1, max_size=20).map(lambda junk: json.dumps(valid).encode()[:-1] + junk)
        .filter(not_json),  # broken JSON, stray bytes
        st.binary(max_size=20).map(lambda b: b"\xff\xfe" + b),  # not UTF-8
        st.just(json.dumps({**valid, "stop": ["x" * (70 * 1024)]}).encode()),  # over the 64 KiB limit
        JSON.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data(), route=st.sampled_from(sorted(VALID)))
def test_bad_bodies_are_4xx_with_a_message(server, data, route):
    body = data.draw(bodies(route))
    status, _, answer = post(server, route, body, timeout=30)  # a hung connection fails on the timeout
    assert 400 <= status < 500, (status, body[:200], answer)
    assert isinstance(answer, dict) and answer["error"]["message"]


# -- auth ---------------------------------------------------------------------------------------

def test_auth_no_wrong_and_right_token(demo_file):
    with LoopbackServer(build_app(demo_file, api_key="s3cret")) as running:
        for key in ("none", "s3cre", "s3cret-and-more"):
            with pytest.raises(openai.AuthenticationError, match="Authorization: Bearer"):
                running.client(api_key=key).models.list()
        status, headers, _ = post(running, "/v1/completions", json.dumps({**VALID["/v1/completions"], "model": "demo"}).encode())
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        connection.request("GET", "/metrics")
        assert connection.getresponse().status == 401
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        connection.request("GET", "/health")  # open: load balancers probe it
        assert connection.getresponse().status == 200
        answer = running.client(api_key="s3cret").completions.create(model="demo", prompt=PROMPT, max_tokens=4)
        assert answer.choices[0].text


def test_serve_binds_loopback_by_default_and_reads_the_key_from_the_environment(monkeypatch):
    import argparse

    from metagen_plugins import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args([])
    assert args.host == "127.0.0.1" and args.api_key is None
    seen = {}
    monkeypatch.setenv(serve.API_KEY_ENV, "from-env")
    monkeypatch.setattr(serve, "build_app", lambda config, **kw: seen.update(kw) or _Stop())
    monkeypatch.setattr("uvicorn.Server.run", lambda self, *a, **k: seen.update(bound=self.config.host))
    args.plugins_dir = None
    assert serve.main(args) == 0
    assert seen["api_key"] == "from-env" and seen["bound"] == "127.0.0.1"


class _Stop:
    class state:
        class server:
            profiles = {"demo": None}


# -- back-pressure, disconnects, plugin faults ---------------------------------------------------

GATE = source("gate")


@pytest.fixture
def gated(install_plugin, tmp_path):
    install_plugin("metagen_gate_test", GATE)
    import metagen_gate_test

    metagen_gate_test.opened.clear()  # the module stays imported between tests
    metagen_gate_test.started.clear()
    path = tmp_path / "gated.toml"
    path.write_text('[host]\nmodel = "demo-arith"\n[strategy]\nname = "gate"\n')
    registry = metagen_plugins.get_registry(reload=True)
    with LoopbackServer(build_app(path, registry=registry, concurrency=1, max_queue=1)) as running:
        yield running, metagen_gate_test
        metagen_gate_test.opened.set()


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_beyond_the_queue_is_429_with_retry_after_and_the_rest_are_answered(gated):
    running, gate = gated
    client = running.client()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.completions.create, model="gated", prompt="Q: 1+1=? A:")
        wait_for(lambda: gate.started)
        second = pool.submit(client.completions.create, model="gated", prompt="Q: 2+2=? A:")  # queued
        wait_for(lambda: metric(running, "metagen_requests_in_flight", profile="gated") == 2)
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model="gated", prompt="Q: 3+3=? A:")
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert "limit of 2 requests" in caught.value.body["message"]
        gate.opened.set()
        assert first.result(timeout=60).choices[0].text and second.result(timeout=60).choices[0].text
    assert metric(running, "metagen_requests_rejected_total", profile="gated") == 1


def test_a_client_that_disconnects_cancels_its_queued_work(gated):
    running, gate = gated
    client = running.client()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.completions.create, model="gated", prompt="Q: 1+1=? A:")
        wait_for(lambda: gate.started)
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
        connection.request("POST", "/v1/completions", body=json.dumps({"model": "gated", "prompt": "Q: 5+5=? A:"}),
                           headers={"Content-Type": "application/json"})
        wait_for(lambda: metric(running, "metagen_requests_in_flight", profile="gated") == 2)
        connection.close()  # the client goes away while its request waits in the queue
        wait_for(lambda: metric(running, "metagen_requests_cancelled_total", profile="gated", stage="queued") == 1)
        gate.opened.set()
        assert first.result(timeout=60).choices[0].text
    wait_for(lambda: metric(running, "metagen_requests_in_flight", profile="gated") == 0)
    assert gate.started == ["Q: 1+1=? A:"]  # the cancelled prompt never ran


def test_a_plugin_that_raises_fails_its_request_alone_naming_the_component(gated):
    running, gate = gated
    gate.opened.set()
    client = running.client()
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model="gated", prompt="Q: explode? A:")
    message = caught.value.body["message"]
    assert "'gate' (strategy of plugin 'metagen_gate_test') raised ZeroDivisionError" in message
    assert "error id" in message
    # what a client never sees: the error's text, the plugin's file and line, versions (the log has them)
    assert "exploded" not in message and ".py" not in message and "1.0" not in message
    assert client.completions.create(model="gated", prompt="Q: 1+1=? A:").choices[0].text  # the server goes on


def test_a_progress_stream_the_client_closes_is_cancelled_not_a_200(gated):
    running, gate = gated
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    connection.request("POST", "/v1/completions", body=json.dumps({
        "model": "gated", "prompt": "Q: 4+4=? A:", "stream": True, "metagen": {"progress": True}}),
        headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    assert answer.status == 200
    wait_for(lambda: gate.started)
    connection.close()  # the client goes away while the strategy runs
    wait_for(lambda: metric(running, "metagen_requests_total", route="completions", profile="gated", status="499") == 1)
    assert metric(running, "metagen_requests_total", route="completions", profile="gated", status="200") == 0
    assert metric(running, "metagen_requests_cancelled_total", profile="gated", stage="running") == 1
    gate.opened.set()
    wait_for(lambda: metric(running, "metagen_requests_in_flight", profile="gated") == 0)


# -- load -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_64_concurrent_clients_get_every_answer_once_and_equal_to_sequential(tmp_path):
    """64 clients x 4 requests, distinct prompts, sampled with the profile's seed: every
    request answered, none lost or swapped, each as a sequential run gives it."""
    config = {"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 6, "seed": 3},
              "processors": [{"name": "temperature", "temperature": 0.8}]}
    path = tmp_path / "load.toml"
    path.write_text('[host]\nmodel = "demo-arith"\n[generation]\nmax_new_tokens = 6\nseed = 3\n'
                    '[[processors]]\nname = "temperature"\ntemperature = 0.8\n')
    prompts = [[f"Q: {10 + client}+{50 + k}=? A:" for k in range(4)] for client in range(64)]
    flat = [p for ps in prompts for p in ps]
    sequential = {r.prompt: r.best.text for r in metagen_plugins.run(config, flat, concurrency=1)}
    with LoopbackServer(build_app(path)) as running:
        def one_client(mine):
            client = running.client(timeout=600)
            return [(p, client.completions.create(model="load", prompt=p)) for p in mine]

        with ThreadPoolExecutor(64) as pool:
            answers = [a for batch in pool.map(one_client, prompts) for a in batch]
        assert metric(running, "metagen_requests_total", route="completions", profile="load", status="200") == 256
    assert len(answers) == 256 and len({a.id for _, a in answers}) == 256
    for prompt, answer in answers:
        assert answer.choices[0].text == sequential[prompt], prompt
    operands = [p.split()[1].rstrip("=?") for p in flat]
    assert sum(a.choices[0].text.strip().startswith(o[:4]) for (_, a), o in zip(answers, operands)) > 200


# -- a real vLLM backend frozen, killed and restarted under the server ----------------------------

def _toml(sections: dict) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]  # str/int/float/bool: JSON is TOML
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_a_vllm_backend_that_times_out_or_dies_gives_504_or_502_and_the_server_recovers(tmp_path):
    import os
    import signal

    from vllm_server import DEMO, VLLM_PYTHON, VLLMServer, available

    if not available():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it")
    engine = VLLMServer(DEMO, tmp_path / "vllm.log")
    try:
        engine.wait()
        path = tmp_path / "remote.toml"  # two profiles: a patient one, and one that times out in 3 s
        path.write_text(_toml({"profiles.remote.host": {**engine.host, "timeout": 120.0, "retries": 1},
                               "profiles.remote.generation": {"max_new_tokens": 16},
                               "profiles.impatient.host": {**engine.host, "timeout": 3.0, "retries": 0},
                               "profiles.impatient.generation": {"max_new_tokens": 16}}))
        with LoopbackServer(build_app(path)) as running:
            client = running.client(timeout=300)
            ok = client.completions.create(model="remote", prompt=PROMPT)
            assert ok.choices[0].text and ok.usage.completion_tokens > 0
            assert client.completions.create(model="impatient", prompt=PROMPT).choices[0].text == ok.choices[0].text

            os.killpg(engine.process.pid, signal.SIGSTOP)  # frozen: requests time out
            try:
                with pytest.raises(openai.APIStatusError) as caught:
                    client.completions.create(model="impatient", prompt=PROMPT)
                assert caught.value.status_code == 504 and "timeout" in caught.value.body["message"]
            finally:
                os.killpg(engine.process.pid, signal.SIGCONT)
            assert client.completions.create(model="remote", prompt=PROMPT).choices[0].text == ok.choices[0].text

            with ThreadPoolExecutor(4) as pool:  # killed while requests are in flight
                flying = [pool.submit(client.completions.create, model="remote", prompt=f"Q: {i}+{i}=? A:")
                          for i in range(8)]
                engine.stop()
                outcomes = []
                for future in flying:
                    try:
                        outcomes.append(future.result(timeout=120).choices[0].text and 200)
                    except openai.APIStatusError as exc:
                        outcomes.append(exc.status_code)
                        assert "vllm backend failed" in exc.body["message"], exc.body
            assert set(outcomes) <= {200, 502} and 502 in outcomes
            with pytest.raises(openai.APIStatusError) as caught:
                client.completions.create(model="remote", prompt=PROMPT)
            assert caught.value.status_code == 502 and "connection" in caught.value.body["message"]
            assert sorted(m.id for m in client.models.list()) == ["impatient", "remote"]  # the server goes on

            port = int(engine.url.rsplit(":", 1)[1])  # the engine comes back on the same address
            engine = VLLMServer(DEMO, tmp_path / "vllm-again.log", port=port)
            engine.wait()
            assert client.completions.create(model="remote", prompt=PROMPT).choices[0].text == ok.choices[0].text
    finally:
        engine.stop()


# -- a remote host (the TGI stand-in): refinement, 502 and 504, recovery ------------------------

def test_a_remote_profile_refines_per_request_and_maps_engine_faults_to_502_and_504(tmp_path):
    from tgi_server import Fault, TGIServer

    with TGIServer() as engine:
        host = {"name": "tgi", "url": engine.url, "concurrency": 4, "timeout": 3.0, "retries": 0}
        profile = {"host": host, "generation": {"seed": 0, "max_new_tokens": 40},
                   "processors": [{"name": "temperature", "temperature": 0.8}],
                   "strategy": {"name": "self_consistency", "n": 4}}
        path = tmp_path / "tgi.toml"
        path.write_text(_toml({k: v for k, v in profile.items() if k not in ("processors",)})
                        + '[[processors]]\nname = "temperature"\ntemperature = 0.8\n')
        with LoopbackServer(build_app(path)) as running:
            client = running.client()
            plain = client.completions.create(model="tgi", prompt=PROMPT)
            assert plain.choices[0].text == metagen_plugins.run(profile, PROMPT).best.text
            refined = client.completions.create(model="tgi", prompt=PROMPT, seed=5,
                                                extra_body={"metagen": {"strategy": {"n": 6}}})
            same = metagen_plugins.run({**profile, "generation": {"seed": 5, "max_new_tokens": 40},
                                        "strategy": {"name": "self_consistency", "n": 6}}, PROMPT)
            assert refined.model_extra["metagen"]["num_candidates"] == 6
            assert refined.choices[0].text == same.best.text

            engine.faults = [Fault(status=500, error="CUDA error", error_type="incomplete_generation")] * 4
            with pytest.raises(openai.APIStatusError) as caught:
                client.completions.create(model="tgi", prompt=PROMPT)
            assert caught.value.status_code == 502 and "CUDA error" in caught.value.body["message"]
            engine.faults = [Fault(delay=6.0)] * 4
            with pytest.raises(openai.APIStatusError) as caught:
                client.completions.create(model="tgi", prompt=PROMPT)
            assert caught.value.status_code == 504 and "timeout" in caught.value.body["message"]
            engine.faults = []
            assert client.completions.create(model="tgi", prompt=PROMPT).choices[0].text == plain.choices[0].text
