"""The served reward-model scorers (builtin/scorers/served.py): requests and answers offline,
through httpx2's MockTransport (a handler that answers as vLLM's /classify does, errors
included), and against a real vLLM server serving the demo PRM as a classifier, where their
scores must equal the in-process scorers' on the same checkpoint and a strategy on the vLLM host
uses them."""

from __future__ import annotations

import json
import threading

import httpx2
import pytest

import metagen_plugins
from metagen_hooks import Candidate
from metagen_plugins.errors import ConfigError, HostError

PROMPT = "Q: 37+48-19=? A:"
CANDIDATES = [Candidate(PROMPT, " 37+48=85. 85-19=66. #### 66"), Candidate(PROMPT, " 37+48=85. 85-19=67. #### 67"),
              Candidate(PROMPT, " 37+48=95. #### 95"), Candidate(PROMPT, " #### 66")]


def build(entry: dict):
    registry = metagen_plugins.get_registry()
    info = registry.get("scorers", entry["name"])
    return metagen_plugins.build(info, {k: v for k, v in entry.items() if k != "name"})


def reward(text: str) -> float:
    """The stand-in classifier's P(good): a function of the text alone, so answers can be checked."""
    return (len(text) % 97) / 97


class FakeClassify:
    """A /classify handler for MockTransport: answers each request's texts with :func:`reward`,
    rejects texts containing "TOO LONG" as vLLM rejects a text beyond --max-model-len, and
    records every request body. With a ``tokenizer`` it also answers /tokenize, and /pooling with
    task token_classify (token ids in): at every token, :func:`reward` of the text up to it, as a
    causal classifier gives each prefix what it gives that prefix alone."""

    def __init__(self, model: str = "prm", classes: int = 1, shuffle: bool = False, tokenizer=None) -> None:
        self.model, self.classes, self.shuffle, self.tokenizer = model, classes, shuffle, tokenizer
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if self.tokenizer is not None and request.url.path in ("/tokenize", "/pooling"):
            return self.tokens(request.url.path, json.loads(request.content))
        if request.url.path != "/classify":
            return httpx2.Response(404, json={"detail": "Not Found"})
        body = json.loads(request.content)
        with self.lock:
            self.requests.append(body)
        if body["model"] != self.model:
            return httpx2.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist.",
                                                        "type": "NotFoundError", "code": 404}})
        if any("TOO LONG" in text for text in body["input"]):
            return httpx2.Response(400, json={"error": {"message": "This model's maximum context length is 128 "
                                                        "tokens. However, your prompt contains at least 129 input "
                                                        "tokens", "type": "BadRequestError", "code": 400}})
        rows = [{"index": i, "label": None, "num_classes": self.classes,
                 "probs": [1 - reward(text)] * (self.classes - 1) + [reward(text)]}
                for i, text in enumerate(body["input"])]
        if self.shuffle:
            rows.reverse()
        return httpx2.Response(200, json={"object": "list", "model": self.model, "data": rows})


    def tokens(self, path: str, body: dict) -> httpx2.Response:
        with self.lock:
            self.requests.append({"path": path, **body})
        if path == "/tokenize":
            return httpx2.Response(200, json={"tokens": self.tokenizer(body["prompt"])["input_ids"]})
        assert body["task"] == "token_classify" and all(isinstance(i, int) for row in body["input"] for i in row)
        rows = [{"index": i, "object": "pooling",
                 "data": [[reward(self.tokenizer.decode(ids[:k + 1], skip_special_tokens=True))]
                          for k in range(len(ids))]} for i, ids in enumerate(body["input"])]
        return httpx2.Response(200, json={"object": "list", "model": self.model, "data": rows})


def served(entry: dict, handler) -> object:
    scorer = build(entry)
    scorer.classifier.transport = httpx2.MockTransport(handler)
    scorer.classifier.backoff = 0.0  # retries at once (test_retries checks the waits)
    return scorer


def test_outcome_model_sends_prompt_plus_candidate_and_reads_the_last_class():
    for classes, shuffle in ((1, False), (3, True)):
        handler = FakeClassify(classes=classes, shuffle=shuffle)
        orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm"}, handler)
        scores = orm.score(PROMPT, CANDIDATES)
        assert scores == pytest.approx([reward(PROMPT + c.text) for c in CANDIDATES])
        assert handler.requests == [{"model": "prm", "input": [PROMPT + c.text for c in CANDIDATES]}]
        orm.close()


def test_process_model_scores_step_prefixes_as_the_in_process_one_splits_them():
    from metagen_plugins.builtin.scorers.model_scorers import StepRewards

    handler = FakeClassify()
    prm = served({"name": "served_process_reward_model", "url": "http://vllm:8000/", "served_model": "prm",
                  "aggregate": "last", "batch_size": 3}, handler)
    splitter = StepRewards()
    splitter.delimiter = ". "
    steps = prm.score_steps(PROMPT, CANDIDATES)
    assert [len(s) for s in steps] == [3, 3, 2, 1]
    for candidate, got in zip(CANDIDATES, steps):
        assert got == pytest.approx([reward(PROMPT + p) for p in splitter._prefixes(candidate.text)])
    assert prm.score(PROMPT, CANDIDATES) == pytest.approx([s[-1] for s in steps])
    # nine prefixes in chunks of batch_size 3, twice (score_steps, then score)
    assert sorted(len(r["input"]) for r in handler.requests) == [3] * 6
    prm.close()


def test_tokens_mode_reads_each_step_at_its_last_token_in_one_request_per_candidate():
    """mode = "tokens": one token-id input per candidate to /pooling (token_classify); the step
    scores are the per-token outputs at each step's last token, so they equal the prefixes mode's
    scores of the same classifier (the demo tokenizer splits at every step's end)."""
    from metagen_plugins.models import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("demo-arith-prm"))
    handler = FakeClassify(model="demo-arith-prm", tokenizer=tokenizer)
    entry = {"name": "served_process_reward_model", "url": "http://vllm:8000", "served_model": "demo-arith-prm",
             "batch_size": 3}
    by_prefix, by_token = served(entry, handler), served({**entry, "mode": "tokens"}, handler)
    candidates = CANDIDATES + [Candidate(PROMPT, "")]
    for aggregate in ("min", "last", "prod"):
        by_prefix.aggregate = by_token.aggregate = aggregate
        handler.requests.clear()
        steps = by_token.score_steps(PROMPT, candidates)
        expected = by_prefix.score_steps(PROMPT, candidates)
        assert [len(s) for s in steps] == [len(s) for s in expected] == [3, 3, 2, 1, 1]
        assert [x for s in steps for x in s] == pytest.approx([x for s in expected for x in s])
        pooled = [r for r in handler.requests if r.get("path") == "/pooling"]
        assert [len(r["input"]) for r in pooled] == [3, 2]  # five candidates, batch_size 3
        assert [ids for r in pooled for ids in r["input"]] == [tokenizer(PROMPT + c.text)["input_ids"]
                                                              for c in candidates]
        # the server's tokenizer is asked once, for the first text scored, to check ours
        asked = [r["prompt"] for r in handler.requests if r.get("path") == "/tokenize"]
        assert asked == ([PROMPT + candidates[0].text] if aggregate == "min" else [])
        assert by_token.score(PROMPT, candidates) == pytest.approx(by_prefix.score(PROMPT, candidates))
    by_prefix.close()
    by_token.close()


def test_tokens_mode_refuses_a_tokenizer_that_is_not_the_servers():
    from metagen_plugins.models import load_tokenizer, resolve

    handler = FakeClassify(model="demo-arith-prm", tokenizer=load_tokenizer(resolve("demo-arith-prm")))
    prm = served({"name": "served_process_reward_model", "url": "http://vllm:8000", "served_model": "demo-arith-prm",
                  "mode": "tokens", "served_tokenizer": "demo-arith-prm"}, handler)
    handler.tokenizer = _Shifted(handler.tokenizer)
    with pytest.raises(HostError, match=r"served_process_reward_model: parameter 'served_tokenizer' is not the served "
                                        r"model's tokenizer: .*the first difference is at token 1"):
        prm.score(PROMPT, CANDIDATES)
    assert not [r for r in handler.requests if r.get("path") == "/pooling"]  # nothing scored at wrong tokens
    prm.close()


class _Shifted:
    """A tokenizer that differs from the demo's: every id after the first one more."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text):
        ids = self.tokenizer(text)["input_ids"]
        return {"input_ids": ids[:1] + [i + 1 for i in ids[1:]]}


def test_a_server_for_the_other_pooling_task_names_the_mode_and_the_flag():
    def token_server(request):  # vLLM started with --pooler-config '{"task": "token_classify"}'
        return httpx2.Response(501, json={"error": {"message": "The model does not support Classification API",
                                                    "type": "NotImplementedError", "code": 501}})

    from metagen_plugins.models import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve("demo-arith-prm"))

    def classify_server(request):  # vLLM started for classify, asked for token_classify
        if request.url.path == "/tokenize":
            return httpx2.Response(200, json={"tokens": tokenizer(json.loads(request.content)["prompt"])["input_ids"]})
        return httpx2.Response(400, json={"error": {"message": "Try switching the model's pooling_task via "
                                                    "--pooler-config.task token_classify. (parameter=task)",
                                                    "type": "BadRequestError", "code": 400}})

    entry = {"name": "served_process_reward_model", "url": "http://vllm:8000", "served_model": "demo-arith-prm"}
    prm = served(entry, token_server)
    with pytest.raises(HostError, match=r"serves 'demo-arith-prm' for another pooling task .*mode = 'prefixes' "
                                        r"needs a server started without --pooler-config's task; or set parameter "
                                        r"'mode' = \"tokens\""):
        prm.score(PROMPT, CANDIDATES)
    prm.close()
    prm = served({**entry, "mode": "tokens"}, classify_server)
    with pytest.raises(HostError, match=r"mode = 'tokens' needs a server started with --pooler-config "
                                        r"'\{\"task\": \"token_classify\"\}'"):
        prm.score(PROMPT, CANDIDATES)
    prm.close()


@pytest.mark.parametrize("failure", ["503", "connection", "429"])
def test_retries_what_may_pass_and_then_answers(monkeypatch, failure):
    """A 5xx, a dropped connection or a 429 is sent again (after the backoff, or the server's
    Retry-After); the answer is the same as if nothing had failed; with retries = 0 the first
    failure is the error, and a rejected text (400) is never sent twice."""
    from metagen_plugins.hostkit import retrying
    from metagen_plugins.builtin.scorers import served as served_module

    waits, sleep = [], served_module.asyncio.sleep

    async def recorded(seconds, *args):
        waits.append(seconds)
        return await sleep(0, *args)

    monkeypatch.setattr(served_module.asyncio, "sleep", recorded)
    monkeypatch.setattr(retrying.random, "random", lambda: 0.0)  # no jitter
    good = FakeClassify()
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) <= 2:
            if failure == "connection":
                raise httpx2.ConnectError("connection refused", request=request)
            status = int(failure)
            return httpx2.Response(status, headers={"Retry-After": "3"} if status == 429 else {},
                                   json={"error": {"message": "busy"}})
        return good(request)

    orm = build({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm"})
    orm.classifier.transport = httpx2.MockTransport(flaky)
    assert orm.score(PROMPT, CANDIDATES) == pytest.approx([reward(PROMPT + c.text) for c in CANDIDATES])
    assert len(calls) == 3 and len(good.requests) == 1
    assert waits == ([3.0, 3.0] if failure == "429" else [0.5, 1.0])  # Retry-After, else 0.5 s doubling
    orm.close()
    calls.clear()
    once = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm",
                   "retries": 0}, flaky)
    with pytest.raises(HostError, match="served_outcome_reward_model: "):
        once.score(PROMPT, CANDIDATES)
    assert len(calls) == 1
    once.close()


def test_retries_run_out_with_the_count_and_the_parameter_named():
    calls = []

    def down(request):
        calls.append(request)
        return httpx2.Response(503, json={"error": {"message": "engine restarting"}})

    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm",
                  "retries": 3}, down)
    with pytest.raises(HostError, match=r"failed \(HTTP 503\): engine restarting \(after 4 attempts; "
                                        r"parameter 'retries'\)"):
        orm.score(PROMPT, CANDIDATES)
    assert len(calls) == 4
    orm.close()
    calls.clear()
    handler = FakeClassify()
    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm"}, handler)
    with pytest.raises(HostError, match="maximum context length"):
        orm.score(PROMPT, [Candidate(PROMPT, " TOO LONG")])
    assert len(handler.requests) == 1  # a 400 is the text's own fault: not sent again
    orm.close()


def test_concurrent_prompts_share_requests():
    """Prompts scored from many threads at once go out together (Gathered), not one request each."""
    handler = FakeClassify()
    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm",
                  "batch_size": 1000}, handler)
    prompts = [f"Q: {i}+1=? A:" for i in range(24)]
    results: dict[str, list[float]] = {}
    barrier = threading.Barrier(len(prompts))

    def one(prompt):
        barrier.wait()
        results[prompt] = orm.score(prompt, CANDIDATES)

    threads = [threading.Thread(target=one, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for prompt in prompts:
        assert results[prompt] == pytest.approx([reward(prompt + c.text) for c in CANDIDATES])
    assert sum(len(r["input"]) for r in handler.requests) == len(prompts) * len(CANDIDATES)
    assert len(handler.requests) < len(prompts)
    orm.close()


def test_a_rejected_text_fails_its_prompt_alone():
    handler = FakeClassify()
    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm"}, handler)
    bad = [Candidate(PROMPT, " TOO LONG")]
    outcome: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def one(key, candidates):
        barrier.wait()
        try:
            outcome[key] = orm.score(PROMPT, candidates)
        except HostError as exc:
            outcome[key] = exc

    threads = [threading.Thread(target=one, args=("good", CANDIDATES)), threading.Thread(target=one, args=("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcome["good"] == pytest.approx([reward(PROMPT + c.text) for c in CANDIDATES])
    assert isinstance(outcome["bad"], HostError)
    assert "served_outcome_reward_model" in str(outcome["bad"]) and "maximum context length" in str(outcome["bad"])
    orm.close()


def test_wrong_model_names_the_parameter_and_what_is_served():
    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prn"}, FakeClassify())
    with pytest.raises(HostError, match=r"served_outcome_reward_model: .* does not serve a model named 'prn' "
                                        r"\(parameter 'served_model'\); it serves 'prm'"):
        orm.score(PROMPT, CANDIDATES)
    orm.close()


def test_wrong_route_says_to_serve_a_pooling_model():
    def generative(request):  # a vLLM server running a generative model has no /classify
        return httpx2.Response(404, json={"detail": "Not Found"})

    prm = served({"name": "served_process_reward_model", "url": "http://vllm:8000", "served_model": "prm"}, generative)
    with pytest.raises(HostError, match=r"served_process_reward_model: .* has no /classify route .*--runner pooling"):
        prm.score(PROMPT, CANDIDATES)
    prm.close()


def test_malformed_answer_and_server_error_name_the_scorer():
    def short(request):
        return httpx2.Response(200, json={"data": [{"index": 0, "probs": [0.5]}]})

    def broken(request):
        return httpx2.Response(500, json={"error": {"message": "engine dead"}})

    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm"}, short)
    with pytest.raises(HostError, match=r"served_outcome_reward_model: malformed /classify answer"):
        orm.score(PROMPT, CANDIDATES)
    orm.close()
    orm = served({"name": "served_outcome_reward_model", "url": "http://vllm:8000", "served_model": "prm"}, broken)
    with pytest.raises(HostError, match=r"served_outcome_reward_model: .* failed \(HTTP 500\): engine dead"):
        orm.score(PROMPT, CANDIDATES)
    orm.close()


def test_server_down_names_the_url():
    from serve_helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    orm = build({"name": "served_outcome_reward_model", "url": url, "served_model": "prm", "timeout": 5.0})
    with pytest.raises(HostError, match=rf"cannot reach the vLLM server at {url} .*is it running .*--runner pooling\)\? Else fix parameter 'url'"):
        orm.score(PROMPT, CANDIDATES)
    orm.close()


@pytest.mark.parametrize("entry, message", [
    ({"url": "127.0.0.1:8000"}, "parameter 'url' must be the server's address"),
    ({"served_model": ""}, "parameter 'served_model' must be the served model's name"),
    ({"batch_size": 0}, "parameter 'batch_size' must be >= 1"),
    ({"timeout": 0.0}, "parameter 'timeout' must be > 0"),
    ({"retries": -1}, "parameter 'retries' must be >= 0"),
    ({"mode": "tokens", "served_tokenizer": "/nowhere"}, "mode = \"tokens\" places steps on the served model's tokens"),
])
def test_bad_parameters_fail_at_build(entry, message):
    base = {"name": "served_process_reward_model", "url": "http://127.0.0.1:8000", "served_model": "prm"}
    with pytest.raises(ConfigError, match=rf"served_process_reward_model.*{message}"):
        build({**base, **entry})


def test_the_scorers_are_configured_by_name():
    config = metagen_plugins.validate({"strategy": {"name": "best_of_n", "n": 4},
                                       "scorer": {"name": "served_process_reward_model", "url": "http://x:8000",
                                                  "served_model": "demo-arith-prm", "aggregate": "prod"}},
                                      metagen_plugins.get_registry())
    assert config.scorer["name"] == "served_process_reward_model"
    with pytest.raises(ConfigError, match="aggregate"):
        metagen_plugins.validate({"scorer": {"name": "served_process_reward_model", "url": "http://x:8000",
                                             "served_model": "m", "aggregate": "mean"}}, metagen_plugins.get_registry())


# -- against real vLLM servers (tests/fakes/vllm_server.py) ----------------------------------------

SERVER_START_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def vllm_servers(tmp_path_factory):
    """The demo PRM served as a classifier (``--runner pooling``), the same served for per-token
    scores (``--pooler-config '{"task": "token_classify"}'``) and the demo model served for
    generation, all started at once (their startups overlap) and stopped at the end by killing
    the process groups started here."""
    from vllm_server import DEMO, VLLM_PYTHON, ServerFailed, VLLMServer

    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it (make .venv-vllm/.installed)")
    logs = tmp_path_factory.mktemp("vllm-rm-logs")
    prm = {**DEMO, "model": "demo-arith-prm"}
    started = {"prm": VLLMServer(prm, logs / "prm.log", ("--runner", "pooling")),
               "prm_tokens": VLLMServer(prm, logs / "prm-tokens.log",
                                        ("--runner", "pooling", "--pooler-config", '{"task": "token_classify"}')),
               "generator": VLLMServer(DEMO, logs / "generator.log")}
    try:
        for server in started.values():
            try:
                server.wait(SERVER_START_TIMEOUT)
            except ServerFailed as failed:
                pytest.fail(str(failed))
        yield started
    finally:
        for server in started.values():
            server.stop()


def in_process(name: str, **params):
    return build({"name": name, "path": "demo-arith-prm", **params})


def assert_refused(entry: dict, message: str) -> None:
    """Scoring with the served scorer ``entry`` fails with a HostError matching ``message``."""
    scorer = build(entry)
    try:
        with pytest.raises(HostError, match=message):
            scorer.score(PROMPT, CANDIDATES)
    finally:
        scorer.close()


def assert_served_prm_equals_in_process(url: str, **params) -> tuple[list[str], list[Candidate]]:
    """The served PRM at ``url`` (with ``params``) gives the in-process PRM's step scores and
    scores, for every aggregate, on prompts and candidates of every length (one empty); returns
    those prompts and candidates."""
    prompts = [PROMPT, "Q: 6*7+5=? A:", "Q: 90-45+3=? A:"]
    candidates = CANDIDATES + [Candidate(PROMPT, " 37+48=85. 85-19=66. 66+0=66. #### 66"), Candidate(PROMPT, "")]
    for aggregate in ("min", "last", "prod"):
        here = in_process("process_reward_model", aggregate=aggregate)
        there = build({"name": "served_process_reward_model", "url": url, "served_model": "demo-arith-prm",
                       "aggregate": aggregate, "batch_size": 4, **params})
        for prompt in prompts:
            steps_here, steps_there = here.score_steps(prompt, candidates), there.score_steps(prompt, candidates)
            assert [len(s) for s in steps_there] == [len(s) for s in steps_here]
            assert [x for s in steps_there for x in s] == pytest.approx([x for s in steps_here for x in s], abs=1e-5)
            assert there.score(prompt, candidates) == pytest.approx(here.score(prompt, candidates), abs=1e-5)
        there.close()
    return prompts, candidates


@pytest.mark.slow
def test_served_scores_equal_the_in_process_scorers_on_the_same_checkpoint(vllm_servers):
    url = vllm_servers["prm"].url
    prompts, candidates = assert_served_prm_equals_in_process(url)
    here = in_process("outcome_reward_model")
    there = build({"name": "served_outcome_reward_model", "url": url, "served_model": "demo-arith-prm"})
    for prompt in prompts:
        assert there.score(prompt, candidates) == pytest.approx(here.score(prompt, candidates), abs=1e-5)
    # the real server's refusals, named: a text beyond --max-model-len fails alone, a wrong model
    with pytest.raises(HostError, match="served_outcome_reward_model: .*maximum context length"):
        there.score(PROMPT, [Candidate(PROMPT, " 1+1" * 60)])
    there.close()
    assert_refused({"name": "served_outcome_reward_model", "url": url, "served_model": "demo-arith"},
                   r"does not serve a model named 'demo-arith' \(parameter 'served_model'\); "
                   r"it serves 'demo-arith-prm'")
    assert_refused({"name": "served_outcome_reward_model", "url": vllm_servers["generator"].url,
                    "served_model": "demo-arith"}, "has no /classify route")


@pytest.mark.slow
def test_tokens_mode_on_a_real_server_equals_the_in_process_scorer(vllm_servers):
    """One /pooling request per candidate gives every step's score: the in-process PRM's, which
    scores each step prefix as a text of its own. A server started for the other task is named."""
    url = vllm_servers["prm_tokens"].url
    assert_served_prm_equals_in_process(url, mode="tokens")
    prm = {"name": "served_process_reward_model", "served_model": "demo-arith-prm"}
    assert_refused({**prm, "url": url},
                   r"for another pooling task .*mode = 'prefixes' needs a server started "
                   r"without --pooler-config's task")
    assert_refused({**prm, "url": vllm_servers["prm"].url, "mode": "tokens"},
                   r"for another pooling task .*mode = 'tokens' needs a server started with --pooler-config")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [{"name": "best_of_n", "n": 4},
                                      {"name": "step_beam_search", "beam_width": 2, "expansions": 2}])
def test_a_strategy_on_the_vllm_host_uses_the_served_reward_model(vllm_servers, strategy):
    """Generation on one vLLM server, verification on another: the strategy's scores are the
    in-process PRM's scores of the same candidates."""
    config = {"host": dict(vllm_servers["generator"].host), "generation": {"max_new_tokens": 60, "seed": 0},
              "processors": [{"name": "temperature", "temperature": 0.8}], "strategy": strategy,
              "scorer": {"name": "served_process_reward_model", "url": vllm_servers["prm"].url,
                         "served_model": "demo-arith-prm"}}
    prompts = [PROMPT, "Q: 6*7+5=? A:", "Q: 90-45+3=? A:"]
    results = metagen_plugins.run(config, prompts)
    here = in_process("process_reward_model")
    for prompt, result in zip(prompts, results):
        assert not result.failures and result.candidates
        steps = here.score_steps(prompt, result.candidates)
        expected = here.score(prompt, result.candidates) if strategy["name"] == "best_of_n" else [s[-1] for s in steps]
        assert result.scores == pytest.approx(expected, abs=1e-5)  # beam search aggregates by "last"
        assert result.best.text == result.candidates[max(range(len(result.scores)),
                                                         key=result.scores.__getitem__)].text
        assert result.budget.spent()["scorer_calls"] >= 1
