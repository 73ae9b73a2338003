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
    records every request body."""

    def __init__(self, model: str = "prm", classes: int = 1, shuffle: bool = False) -> None:
        self.model, self.classes, self.shuffle = model, classes, shuffle
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": self.model, "object": "model"}]})
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


def served(entry: dict, handler) -> object:
    scorer = build(entry)
    scorer.classifier.transport = httpx2.MockTransport(handler)
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
    """The demo PRM served as a classifier (``--runner pooling``) and the demo model served for
    generation, both started at once (their startups overlap) and stopped at the end by killing
    the process groups started here."""
    from vllm_server import DEMO, VLLM_PYTHON, ServerFailed, VLLMServer

    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it (make .venv-vllm/.installed)")
    logs = tmp_path_factory.mktemp("vllm-rm-logs")
    started = {"prm": VLLMServer({**DEMO, "model": "demo-arith-prm"}, logs / "prm.log", ("--runner", "pooling")),
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


@pytest.mark.slow
def test_served_scores_equal_the_in_process_scorers_on_the_same_checkpoint(vllm_servers):
    url = vllm_servers["prm"].url
    prompts = [PROMPT, "Q: 6*7+5=? A:", "Q: 90-45+3=? A:"]
    candidates = CANDIDATES + [Candidate(PROMPT, " 37+48=85. 85-19=66. 66+0=66. #### 66"), Candidate(PROMPT, "")]
    for aggregate in ("min", "last", "prod"):
        here = in_process("process_reward_model", aggregate=aggregate)
        there = build({"name": "served_process_reward_model", "url": url, "served_model": "demo-arith-prm",
                       "aggregate": aggregate, "batch_size": 4})
        for prompt in prompts:
            steps_here, steps_there = here.score_steps(prompt, candidates), there.score_steps(prompt, candidates)
            assert [len(s) for s in steps_there] == [len(s) for s in steps_here]
            for a, b in zip(steps_here, steps_there):
                assert b == pytest.approx(a, abs=1e-5)
            assert there.score(prompt, candidates) == pytest.approx(here.score(prompt, candidates), abs=1e-5)
        there.close()
    here = in_process("outcome_reward_model")
    there = build({"name": "served_outcome_reward_model", "url": url, "served_model": "demo-arith-prm"})
    for prompt in prompts:
        assert there.score(prompt, candidates) == pytest.approx(here.score(prompt, candidates), abs=1e-5)
    # the real server's refusals, named: a text beyond --max-model-len fails alone, a wrong model
    with pytest.raises(HostError, match="served_outcome_reward_model: .*maximum context length"):
        there.score(PROMPT, [Candidate(PROMPT, " 1+1" * 60)])
    there.close()
    wrong = build({"name": "served_outcome_reward_model", "url": url, "served_model": "demo-arith"})
    with pytest.raises(HostError, match=r"does not serve a model named 'demo-arith' \(parameter 'served_model'\); "
                                        r"it serves 'demo-arith-prm'"):
        wrong.score(PROMPT, CANDIDATES)
    wrong.close()
    generative = build({"name": "served_outcome_reward_model", "url": vllm_servers["generator"].url,
                        "served_model": "demo-arith"})
    with pytest.raises(HostError, match="has no /classify route"):
        generative.score(PROMPT, CANDIDATES)
    generative.close()


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
