"""metagen serve's trust boundary (docs/security.md), tested with the attacks: a caller trying to
run code, reach a URL, stall the server with a pattern, bypass admission, crash a route with a
body, exhaust memory; a web page driving the server from the operator's browser. Each test
sends the attack to a real server on loopback and checks the answer it gets."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

import openai
from hypothesis import HealthCheck, given, settings, strategies as st

import metagen_plugins
from metagen_plugins.errors import ConfigError
from metagen_plugins.serve import build_app
from serve_helpers import LoopbackServer

PROMPT = "Q: 37+48-19=? A:"
# A profile that offers more than its own components, within small caps: what a caller may
# choose among, and how far every attack below gets.
OPEN = """
[profiles.open.host]
model = "demo-arith"
[profiles.open.generation]
max_new_tokens = 48
seed = 0
[[profiles.open.processors]]
name = "temperature"
temperature = 0.8
[profiles.open.strategy]
name = "self_consistency"
n = 2
[profiles.open.budget]
max_samples = 4
max_tokens = 256
[profiles.open.serve]
components = ["regex", "code_tests", "grammar", "served_outcome_reward_model", "best_of_n", "min_p", "step_checker"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("security") / "open.toml"
    path.write_text(OPEN)
    with LoopbackServer(build_app(path)) as running:
        yield running


def raw(running, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 60):
    """One request with exactly these headers; (status, parsed JSON or text)."""
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=timeout)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    answer = connection.getresponse()
    text = answer.read().decode("utf-8", "replace")
    try:
        return answer.status, json.loads(text)
    except ValueError:
        return answer.status, text


def complete(running, metagen: dict | None = None, **fields):
    body = {"model": "open", "prompt": PROMPT, "max_tokens": 16, **fields}
    if metagen is not None:
        body["metagen"] = metagen
    return raw(running, "POST", "/v1/completions", json.dumps(body).encode())


def refused(answer, status: int, param: str | None, *words: str) -> None:
    code, body = answer
    assert code == status, body
    error = body["error"]
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]


# -- 1. code execution from a request ---------------------------------------------------------

def test_a_request_cannot_run_code_or_weaken_the_sandbox(server, tmp_path):
    marker = tmp_path / "pwned"
    setup = f"import os; os.system('id > {marker}')"
    attack = {"scorer": {"name": "code_tests", "setup": setup, "isolation": "limits", "tests": ["assert True"]}}
    refused(complete(server, attack), 400, "metagen.scorer.setup", "operator's alone", "code_tests")
    for param, value in (("isolation", "limits"), ("memory_mb", 100000), ("cpu_seconds", 1000),
                         ("tests", ["assert True"]), ("tests_file", "/etc/passwd"), ("max_processes", 10**6)):
        refused(complete(server, {"scorer": {"name": "code_tests", param: value}}), 400, f"metagen.scorer.{param}")
    # a grammar forcing a loadable candidate: the grammar itself is the operator's
    refused(complete(server, {"processors": [{"name": "grammar", "regex": "import os.*"}]}), 400,
            "metagen.processors[0].regex", "from the server's operator only", "[serve] parameters")
    # program_aided runs generated code: not offered, and its sandbox parameters are never a caller's
    refused(complete(server, {"strategy": {"name": "program_aided", "isolation": "limits"}}), 400,
            "metagen.strategy.name", "is not offered")
    assert not marker.exists()


def test_a_component_that_runs_code_needs_full_isolation_or_the_operators_explicit_opt_out(tmp_path):
    path = tmp_path / "weak.toml"
    path.write_text('[host]\nmodel = "demo-arith"\n[scorer]\nname = "code_tests"\ntests = ["assert True"]\n'
                    'isolation = "limits"\n')
    with pytest.raises(ConfigError, match="runs code with isolation = 'limits'.*--allow-unisolated-code"):
        build_app(path)
    app = build_app(path, unisolated_code=True)  # the operator accepted the risk
    app.state.server.close()


def test_never_parameters_cannot_be_allowed_by_the_operator_either(tmp_path):
    registry = metagen_plugins.get_registry()
    for dotted, words in (("code_tests.setup", "can never be set by a request"),
                          ("served_outcome_reward_model.url", "can never be set"),
                          ("llm_judge.template", "can never be set"),
                          ("no_such.thing", "must be \"component.parameter\"")):
        path = tmp_path / "p.toml"
        path.write_text(f'[host]\nmodel = "demo-arith"\n[serve]\nparameters = ["{dotted}"]\n')
        with pytest.raises(ConfigError, match=words):
            metagen_plugins.serve.profiles.load_profiles(path, registry)
    path.write_text('[host]\nmodel = "demo-arith"\n[serve]\ncomponents = ["self_consistensy"]\n')
    with pytest.raises(ConfigError, match="did you mean 'self_consistency'"):
        metagen_plugins.serve.profiles.load_profiles(path, registry)


def test_a_plugin_cannot_declare_a_parameter_it_does_not_take_for_callers(install_plugin, registry):
    install_plugin("metagen_bad_caller", """
        from metagen_hooks import hookimpl

        class Quiet:
            def __init__(self, n: int = 1):
                self.n = n

        @hookimpl
        def register_strategies(register):
            register("quiet", Quiet, caller=("n", "url"))
    """)
    record = registry().manager.records["metagen_bad_caller"]
    assert record.status == "FAILED" and "caller= naming ['url']" in record.error


def test_the_operator_widens_what_a_caller_may_set(tmp_path):
    path = tmp_path / "wide.toml"
    path.write_text('[host]\nmodel = "demo-arith"\n[generation]\nmax_new_tokens = 8\n'
                    '[serve]\ncomponents = ["no_repeat_ngram"]\nparameters = ["temperature.temperature"]\n')
    with LoopbackServer(build_app(path)) as running:
        client = running.client()
        # a declared parameter of an offered component: accepted, and it is what ran
        answer = client.completions.create(model="wide", prompt=PROMPT, extra_body={"metagen": {
            "processors": [{"name": "no_repeat_ngram", "ngram_size": 2}], "candidates": True}})
        expected = metagen_plugins.run({"host": {"model": "demo-arith"}, "generation": {"max_new_tokens": 8},
                                        "processors": [{"name": "no_repeat_ngram", "ngram_size": 2}]}, PROMPT)
        assert answer.choices[0].text == expected.best.text
        with pytest.raises(openai.BadRequestError, match="is not offered by model 'wide'"):
            client.completions.create(model="wide", prompt=PROMPT, extra_body={"metagen": {
                "processors": [{"name": "top_k", "top_k": 2}]}})


# -- 2. patterns run in linear time; the server stays responsive --------------------------------

def test_a_catastrophic_pattern_neither_stalls_its_request_nor_the_server(server):
    timings: list[float] = []
    done = threading.Event()

    def probe_health():
        while not done.is_set():
            started = time.perf_counter()
            status, _ = raw(server, "GET", "/health", timeout=30)
            timings.append(time.perf_counter() - started)
            assert status == 200
            time.sleep(0.05)

    with ThreadPoolExecutor(2) as pool:
        prober = pool.submit(probe_health)
        answer = complete(server, {"stopping": [{"name": "regex", "pattern": "(.|.)*§"}]}, max_tokens=48)
        done.set()
        prober.result()
    assert answer[0] == 200, answer  # before RE2: past 60 s, and /health took 30 s
    assert timings and max(timings) < 2.0, timings  # a generous bound: the point is "not frozen"
    print(f"/health during the pattern attack: {len(timings)} probes, max {max(timings) * 1000:.0f} ms")


@pytest.mark.parametrize("pattern, words", [
    ("(", "is not a regular expression metagen can run: missing )"),
    (r"(a)\1", "backreferences and lookaround"),
    ("(a)" * 30000, "characters long"),
])
def test_bad_patterns_are_400_naming_the_pattern(server, pattern, words):
    code, body = complete(server, {"stopping": [{"name": "regex", "pattern": pattern}]})
    assert code == 400 and words in body["error"]["message"] or "at most 4096" in body["error"]["message"], body


def test_stop_strings_are_bounded_in_all(server):
    """Building a stop-string matcher costs vocabulary x length: a caller's strings are bounded."""
    refused(complete(server, {"stopping": [{"name": "stop_strings", "stop": ["x" * 1000] * 5}]}), 400,
            "metagen.stopping[0].stop", "at most 4096")
    refused(complete(server, stop=["y" * 1000] * 5), 400, "stop", "4096 characters in all")


def test_a_strategy_chosen_without_the_scorer_it_needs_is_400(server):
    """Found by the hypothesis test below: best_of_n on a profile with no scorer was a 500."""
    refused(complete(server, {"strategy": {"name": "best_of_n"}}), 400, "metagen.scorer", "needs a [scorer]")


def test_a_budget_that_allows_nothing_is_400(server):
    """Found by the hypothesis test below (another seed): max_samples = 0 was a 500 "no answer"."""
    refused(complete(server, {"budget": {"max_samples": 0}}), 400, "metagen.budget", "allowed no generation")


def test_a_bad_answer_pattern_is_400_before_generation(server):
    refused(complete(server, {"strategy": {"answer_pattern": "(?=x)"}}), 400, "metagen",
            "backreferences and lookaround")


# -- 3. no URL from a request ------------------------------------------------------------------

def test_a_request_cannot_send_the_server_to_a_url(server):
    for param in ("url", "served_model", "api_key"):
        refused(complete(server, {"scorer": {"name": "served_outcome_reward_model", param: "http://127.0.0.1:22"}}),
                400, f"metagen.scorer.{param}", "the operator's alone")


# -- 4. one admission, whatever the refinements -------------------------------------------------

def test_distinct_seeds_share_one_admission_on_a_remote_host(tmp_path):
    from tgi_server import Fault, TGIServer

    with TGIServer() as engine:
        path = tmp_path / "tgi.toml"
        path.write_text(f'[host]\nname = "tgi"\nurl = "{engine.url}"\ntimeout = 30.0\nretries = 0\n'
                        f'[generation]\nmax_new_tokens = 8\n')
        engine.faults = [Fault(delay=3.0)] * 12
        with LoopbackServer(build_app(path, concurrency=1, max_queue=1)) as running:
            client = running.client(timeout=60)

            def one(seed):
                try:
                    return client.completions.create(model="tgi", prompt=PROMPT, seed=seed) and 200
                except openai.APIStatusError as exc:
                    return exc.status_code

            with ThreadPoolExecutor(12) as pool:
                statuses = sorted(pool.map(one, range(12)))
            assert statuses == [200, 200] + [429] * 10, statuses  # was 12 x 200: a runner per seed
            assert len(running.app.state.server.runners.lanes) == 1


# -- 5. bodies that used to be 500s ------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[" * 1000 + b"]" * 1000,
    json.dumps({"model": "open", "prompt": PROMPT}).encode()[:-1] + b', "metagen": ' + b"[" * 480 + b"]" * 480 + b"}",
    json.dumps({"model": "open", "prompt": PROMPT, "metagen": {"strategy": {"n": [[[[[[1]]]]]]}}}).encode(),
])
def test_deep_json_is_400(server, body):
    status, answer = raw(server, "POST", "/v1/completions", body)
    assert status == 400, answer


def test_headers_over_the_limit_are_431_and_the_connection_closed(server):
    """The 8 MiB header of the report was read whole and answered 200: now the server answers
    431 once 32 KiB of headers have arrived, without waiting for the rest, and hangs up."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 65536)  # unfinished
        reply = b""
        while b"}}" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
        assert b"headers_too_large" in reply
        assert sock.recv(65536) == b""  # closed: nothing more is read
    assert raw(server, "GET", "/health")[0] == 200


def test_over_long_prompts_are_refused_before_tokenization_and_memory_returns(server):
    def rss() -> int:
        with open(f"/proc/{os.getpid()}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) * 1024

    long_prompt = "Q: 1+1=? " * 111112  # 1e6 characters
    refused(complete(server, prompt=long_prompt), 400, "prompt", "--max-prompt-chars")
    before = rss()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: complete(server, prompt=long_prompt), range(12)))
    assert {a[0] for a in answers} == {400}
    after = rss()
    print(f"RSS before {before / 2**20:.0f} MiB, after 12 concurrent 1e6-character prompts {after / 2**20:.0f} MiB")
    assert after <= before * 1.10  # was +200 MB per concurrent prompt, kept


# -- 6. the browser and the network ------------------------------------------------------------

@pytest.mark.parametrize("headers, status, code", [
    ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),  # a cross-site form post needs no preflight
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"Origin": "https://evil.example"}, 403, "cross_site"),
    ({"Origin": "null"}, 403, "cross_site"),
    ({"Sec-Fetch-Site": "cross-site"}, 403, "cross_site"),
    ({"Host": "evil.example:8000"}, 421, "unexpected_host"),  # DNS rebinding
])
def test_browser_drive_by_requests_are_refused(server, headers, status, code):
    body = json.dumps({"model": "open", "prompt": PROMPT, "max_tokens": 2}).encode()
    answer = raw(server, "POST", "/v1/completions", body, headers)
    assert answer[0] == status and answer[1]["error"]["code"] == code, answer


def test_same_origin_and_non_browser_requests_pass(server):
    body = json.dumps({"model": "open", "prompt": PROMPT, "max_tokens": 2}).encode()
    for headers in ({}, {"Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"},
                    {"Content-Type": "application/json; charset=utf-8"}):
        assert raw(server, "POST", "/v1/completions", body, headers)[0] == 200
    assert raw(server, "GET", "/health", headers={"Host": "10.0.0.7"})[0] == 200  # load balancers


def test_without_a_key_the_server_will_not_bind_beyond_loopback(monkeypatch):
    import argparse

    from metagen_plugins import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    monkeypatch.delenv(serve.API_KEY_ENV, raising=False)
    args = parser.parse_args(["--host", "0.0.0.0"])
    args.plugins_dir = None
    with pytest.raises(ConfigError, match="set --api-key"):
        serve.main(args)


# -- 7. errors and streams ---------------------------------------------------------------------

def test_client_errors_carry_no_paths_or_versions(server):
    from metagen_plugins.serve.errors import public

    message = public("strategy 'x' (plugin 'p', metagen-plugins 0.1.0) raised at parallel.py:33 in "
                     "/usr/lib/python3.11/site-packages/torch/functional.py")
    assert ".py" not in message and "site-packages" not in message
    code, body = complete(server, {"strategy": {"n": "four"}})
    assert code == 400 and ".py" not in body["error"]["message"]
    version = metagen_plugins.__version__ if hasattr(metagen_plugins, "__version__") else None
    if version:
        assert version not in body["error"]["message"]


# -- 8. hostile bodies never get a 500 ----------------------------------------------------------

REGISTRY = metagen_plugins.get_registry()
SECTIONS = {"strategy": "strategies", "scorer": "scorers", "processors": "logits_processors",
            "stopping": "stopping_criteria"}
VALUE = st.none() | st.booleans() | st.integers(-3, 5) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=6) \
    | st.lists(st.integers(0, 50) | st.text(max_size=3), max_size=3)


@st.composite
def component(draw, section):
    kind = SECTIONS[section]
    name = draw(st.sampled_from(sorted(REGISTRY.components[kind])) | st.text(max_size=5))
    params = list(REGISTRY.components[kind][name].schema.params) if name in REGISTRY.components[kind] else []
    keys = draw(st.lists(st.sampled_from(params) if params else st.text(max_size=4), max_size=3))
    return {"name": name, **{k: draw(VALUE) for k in keys}}


EXTENSION = st.fixed_dictionaries({}, optional={
    "strategy": component("strategy"), "scorer": component("scorer"),
    "processors": st.lists(component("processors"), max_size=2), "stopping": st.lists(component("stopping"), max_size=2),
    "generation": st.dictionaries(st.sampled_from(["max_new_tokens", "seed", "do_sample"]), VALUE, max_size=2),
    "budget": st.dictionaries(st.sampled_from(["max_samples", "max_tokens"]), VALUE, max_size=1),
})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(extension=EXTENSION)
def test_hostile_extensions_never_get_a_500(server, extension):
    status, answer = complete(server, extension, max_tokens=4)
    assert status < 500, (extension, answer)


# -- 9. a deadline stops the work, not only the wait ---------------------------------------------

def test_a_request_past_its_deadline_gets_504_and_its_rows_leave_the_engine(tmp_path):
    """A run that would sample for minutes (votes that never settle, thousands of samples
    allowed): at the deadline the client gets 504 and the run's rows leave the batch at the next
    decode step, so its worker is free again at once."""
    path = tmp_path / "endless.toml"
    path.write_text('[host]\nmodel = "demo-arith"\n[generation]\nmax_new_tokens = 64\nseed = 0\n'
                    '[[processors]]\nname = "temperature"\ntemperature = 2.0\n'
                    '[strategy]\nname = "adaptive_self_consistency"\nbatch = 16\nmax_samples = 100000\n'
                    'confidence = 0.999999\n[budget]\nmax_samples = 100000\nmax_tokens = 100000000\n')
    with LoopbackServer(build_app(path, request_timeout=1.0)) as running:
        status, answer = raw(running, "POST", "/v1/completions",
                             json.dumps({"model": "endless", "prompt": PROMPT}).encode())
        assert status == 504 and answer["error"]["code"] == "deadline_exceeded", answer
        engine = running.app.state.server.runners.lanes[next(iter(running.app.state.server.runners.lanes))] \
            .runner.host.engine
        deadline = time.monotonic() + 30
        while any(not r.zombie for r in engine._active) or engine._pending:
            assert time.monotonic() < deadline, "the cancelled run is still decoding"
            time.sleep(0.05)
        status, _ = raw(running, "GET", "/metrics")
        quick = raw(running, "POST", "/v1/completions", json.dumps(
            {"model": "endless", "prompt": PROMPT, "metagen": {"strategy": {"max_samples": 2}}}).encode())
        assert quick[0] == 200, quick  # the server goes on


def test_a_callers_own_deadline_and_token_budget_bound_its_request(tmp_path):
    """metagen.timeout shortens the server's deadline for one request (504 naming it, the work
    stopped); it cannot lengthen it; metagen.budget.max_tokens bounds what the strategy spends,
    and usage reports what it spent."""
    path = tmp_path / "endless.toml"
    path.write_text('[host]\nmodel = "demo-arith"\n[generation]\nmax_new_tokens = 64\nseed = 0\n'
                    '[[processors]]\nname = "temperature"\ntemperature = 2.0\n'
                    '[strategy]\nname = "adaptive_self_consistency"\nbatch = 16\nmax_samples = 100000\n'
                    'confidence = 0.999999\n[budget]\nmax_samples = 100000\nmax_tokens = 100000000\n')
    with LoopbackServer(build_app(path, request_timeout=600.0)) as running:
        started = time.monotonic()
        status, answer = raw(running, "POST", "/v1/completions", json.dumps(
            {"model": "endless", "prompt": PROMPT, "metagen": {"timeout": 1.0}}).encode())
        assert status == 504 and "deadline of 1 s (metagen.timeout)" in answer["error"]["message"], answer
        assert time.monotonic() - started < 60
        for bad in (0, -1, "soon", True, float("inf")):
            body = json.dumps({"model": "endless", "prompt": PROMPT, "metagen": {"timeout": bad}})
            status, answer = raw(running, "POST", "/v1/completions", body.encode())
            assert status == 400 and answer["error"]["param"] == "metagen.timeout", (bad, answer)
        status, answer = raw(running, "POST", "/v1/completions", json.dumps(
            {"model": "endless", "prompt": PROMPT, "metagen": {"budget": {"max_tokens": 300}}}).encode())
        assert status == 200, answer
        assert 0 < answer["usage"]["completion_tokens"] <= 300


def test_on_a_remote_host_the_deadline_closes_the_engine_requests(tmp_path):
    """The backend holds the request (20 s); at the 1-s deadline the client gets 504 and the
    run's HTTP request is closed at once (vLLM aborts a closed request), so the worker is free
    long before the backend would have answered."""
    from tgi_server import Fault, TGIServer

    with TGIServer() as engine:
        path = tmp_path / "slow.toml"
        path.write_text(f'[host]\nname = "tgi"\nurl = "{engine.url}"\ntimeout = 60.0\nretries = 0\n'
                        f'[generation]\nmax_new_tokens = 8\n')
        engine.faults = [Fault(delay=20.0)]
        with LoopbackServer(build_app(path, request_timeout=1.0)) as running:
            status, answer = raw(running, "POST", "/v1/completions",
                                 json.dumps({"model": "slow", "prompt": PROMPT}).encode())
            assert status == 504 and answer["error"]["code"] == "deadline_exceeded", answer
            lane = next(iter(running.app.state.server.runners.lanes.values()))
            deadline = time.monotonic() + 10  # the backend would answer after 20 s
            while lane.pending:
                assert time.monotonic() < deadline, "the cancelled request is still waiting for the backend"
                time.sleep(0.05)
            assert raw(running, "POST", "/v1/completions", json.dumps({"model": "slow", "prompt": PROMPT}).encode())[0] == 200
