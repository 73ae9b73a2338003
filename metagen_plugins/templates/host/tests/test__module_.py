"""The host's own tests, against a stand-in server (Python's http.server, in a thread) that
speaks the part of /v1/completions the host uses: no model, no engine."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from metagen_hooks import Budget, BudgetExceeded, Candidate, ConfigError, Generator, Host, HostError

from @module@ import CompletionsHost


class Completions(BaseHTTPRequestHandler):
    """Choice ``i`` continues with "the answer is {4 + i}. Done"; a stop string ends it before
    the stop (OpenAI's rule; vLLM's ``stop_reason`` says which); ``max_tokens`` counts words."""

    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        choices = []
        for i in range(body["n"]):
            text, finish, matched = f" the answer is {4 + i}. Done", "stop", None
            for s in body.get("stop", []):
                if s in text:
                    text, matched = text[: text.index(s)], s
                    break
            words = text.split(" ")[1:]
            if len(words) > body["max_tokens"]:
                text, finish, matched = " " + " ".join(words[: body["max_tokens"]]), "length", None
            choices.append({"index": i, "text": text, "finish_reason": finish, "stop_reason": matched})
        usage = {"prompt_tokens": len(body["prompt"].split()),
                 "completion_tokens": sum(len(c["text"].split()) for c in choices)}
        data = json.dumps({"choices": choices, "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Completions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Completions.bodies.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def config(url, **generation):
    """What metagen hands the factory: the validated [host] and [generation] tables."""
    return SimpleNamespace(host={"url": url}, generation=generation)


def test_samples_keep_their_stop_string_and_the_budget_is_charged(url):
    host = CompletionsHost(config(url, max_new_tokens=16))
    assert isinstance(host, Host)
    budget = Budget()
    generator = host.generator(budget)
    assert isinstance(generator, Generator)
    [[a, b]] = generator.sample(["Q: 2+2?"], 2, stop=[". "])
    assert (a.text, b.text) == (" the answer is 4. ", " the answer is 5. ")
    assert a.finish_reason == "stop" and a.prompt == "Q: 2+2?"
    assert (budget.samples, budget.tokens_generated, budget.prompt_tokens_computed) == (2, 8, 2)
    assert Completions.bodies[-1] == {"prompt": "Q: 2+2?", "n": 2, "max_tokens": 16, "temperature": 0.0,
                                      "stop": [". "]}  # greedy: no [generation] do_sample


def test_extend_continues_a_prefix(url):
    generator = CompletionsHost(config(url)).generator(Budget())
    [[c]] = generator.extend([Candidate(prompt="Q: 2+2?", text=" Think.")], 1, max_new_tokens=2)
    assert Completions.bodies[-1]["prompt"] == "Q: 2+2? Think."
    assert c.text == " Think. the answer" and c.finish_reason == "length"


def test_the_budget_shrinks_a_request_then_refuses(url):
    budget = Budget(max_samples=3)
    generator = CompletionsHost(config(url)).generator(budget)
    assert len(generator.sample(["Q"], 5)[0]) == 3 and Completions.bodies[-1]["n"] == 3
    with pytest.raises(BudgetExceeded):
        generator.sample(["Q"], 1)


def test_seeds_follow_the_request_not_other_prompts(url):
    host = CompletionsHost(config(url, seed=7, do_sample=True))
    for prompt in ("A", "B", "A"):
        generator = host.generator(Budget())
        generator.sample([prompt], 1)
        generator.sample([prompt], 1)
    seeds = [body["seed"] for body in Completions.bodies]
    assert seeds[0:2] == seeds[2:4] == seeds[4:6] == [7, 8]  # each prompt's generator: seed, seed + 1, ...
    assert Completions.bodies[0]["temperature"] == 1.0


def test_clear_errors():
    with pytest.raises(ConfigError, match="needs \\[host\\] url"):
        CompletionsHost(SimpleNamespace(host={}, generation={}))
    generator = CompletionsHost(config("http://127.0.0.1:9")).generator(Budget())
    with pytest.raises(HostError, match="cannot reach .* is the server running"):
        generator.sample(["Q"], 1)


def test_metagen_runs_a_strategy_on_the_host(url):
    metagen_plugins = pytest.importorskip("metagen_plugins")
    result = metagen_plugins.run({"host": {"name": "@name@", "url": url},
                                  "generation": {"do_sample": True, "seed": 1},
                                  "strategy": {"name": "self_consistency", "n": 3}}, "Q: 2+2?")
    assert len(result.candidates) == 3 and result.budget.samples == 3
    assert result.best.text == " the answer is 4. Done"
