"""The fan-out every serving-engine host shares: concurrency, retries, timeouts, partial failure.

A scripted engine stands in for the HTTP client here; the vLLM and TGI tests drive the same code
over real sockets.
"""

import asyncio
import time

import pytest

import metagen_plugins
from metagen_hooks import Budget, Candidate
from metagen_plugins.config import validate
from metagen_plugins.hostkit import Failure, RemoteError, RemoteGenerator, RemoteHost, Sample


class ScriptedGenerator(RemoteGenerator):
    """Answers from a script: each call pops the next outcome (a Failure, an exception, or a delay)."""

    samples_per_request = 2

    def __init__(self, *args, script=(), delay=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)
        self.delay = delay
        self.calls = []
        self.in_flight = self.peak = 0

    async def request(self, text, n, max_new_tokens, stop, seed, replica):
        self.calls.append((text, n, max_new_tokens, stop, seed))
        outcome = self.script.pop(0) if self.script else None
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(outcome if isinstance(outcome, float) else self.delay)
        finally:
            self.in_flight -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return [Sample(text=f" s{len(self.calls)}.{i}", token_ids=[1, 2], logprobs=[-0.5, -0.25],
                       finish_reason="stop", prompt_tokens=3) for i in range(n)]


class ScriptedHost(RemoteHost):
    name = "vllm"


@pytest.fixture
def host():
    cfg = validate({"host": {"name": "vllm", "url": "http://127.0.0.1:1"}}, metagen_plugins.get_registry())
    made = ScriptedHost(cfg, metagen_plugins.get_registry())
    yield made
    made.loop.close()


def generator(host, budget=None, **kwargs):
    kwargs.setdefault("backoff", 0.001)
    return ScriptedGenerator(host, budget or Budget(), **kwargs)


def test_n_samples_split_into_requests_and_charged(host):
    gen = generator(host, seed=10)
    [[*cands]] = gen.sample(["Q"], n=5, max_new_tokens=7, stop=["."])
    assert len(cands) == 5
    assert [c[1] for c in gen.calls] == [2, 2, 1]  # samples_per_request = 2
    assert sorted(c[4] for c in gen.calls) == [10, 11, 12]  # each request its own seed
    assert all(c[2] == 7 and c[3] == ["."] for c in gen.calls)
    assert gen.budget.samples == 5 and gen.budget.tokens_generated == 10


def test_concurrency_is_bounded_and_requests_overlap(host):
    gen = generator(host, concurrency=3, delay=0.2)
    start = time.perf_counter()
    gen.sample(["a", "b", "c"], n=2)  # three requests of two samples
    assert gen.peak == 3
    assert time.perf_counter() - start < 0.55  # far below three sequential delays (0.6 s)
    gen = generator(host, concurrency=1, delay=0.05)
    gen.sample(["a", "b", "c"], n=2)
    assert gen.peak == 1


def test_retryable_failures_are_retried_then_succeed(host):
    gen = generator(host, script=[Failure("server", "boom", status=503), Failure("rate_limit", "slow down", 429, 0.01)])
    [[c]] = gen.sample(["Q"], n=1)
    assert len(gen.calls) == 3 and gen.failures == [] and c.text.startswith(" s3")


def test_invalid_requests_are_not_retried_and_the_message_is_kept(host):
    gen = generator(host, script=[Failure("invalid", "`top_p` must be > 0.0 and < 1.0", status=422)])
    with pytest.raises(RemoteError, match=r"top_p` must be > 0.0") as caught:
        gen.sample(["Q"], n=1)
    assert len(gen.calls) == 1
    assert caught.value.failures[0]["status"] == 422


def test_partial_failure_keeps_the_samples_that_succeeded(host):
    budget = Budget()
    gen = generator(host, budget, retries=0, script=[None, Failure("server", "gone", 500), None])
    [cands] = gen.sample(["Q"], n=6)
    assert len(cands) == 4  # two of three requests answered
    assert gen.failures == [{"prompt": "Q", "samples": 2, "kind": "server", "status": 500, "error": "gone",
                             "url": "http://127.0.0.1:1"}]
    assert budget.samples == 4  # undelivered samples are not charged


def test_timeout_is_a_failure_naming_the_setting(host):
    gen = generator(host, timeout=0.05, retries=1, script=[1.0, 1.0])
    with pytest.raises(RemoteError, match=r"timeout: no answer within 0.05 s \(\[host\] timeout\) \(after 2 attempts\)"):
        gen.sample(["Q"], n=1)


def test_unclassified_exceptions_become_connection_failures(host):
    gen = generator(host, retries=0, script=[ConnectionRefusedError("refused")])
    with pytest.raises(RemoteError, match="ConnectionRefusedError: refused"):
        gen.sample(["Q"], n=1)


def test_extend_appends_to_the_parent_and_keeps_alignment(host):
    gen = generator(host)
    parent = Candidate(prompt="Q", text=" step1.", token_ids=[5, 6], logprobs=[-1.0, -2.0])
    [[child]] = gen.extend([parent], n=1)
    assert gen.calls[0][0] == "Q step1."
    assert child.text.startswith(" step1. s1") and child.token_ids == [5, 6, 1, 2]
    assert child.logprobs == [-1.0, -2.0, -0.5, -0.25]
    [[child]] = gen.extend([Candidate(prompt="Q", text=" typed by hand")], n=1)
    assert child.token_ids == [] and child.logprobs == []  # the prefix's tokens are unknown


def test_budget_limits_requests_before_sending(host):
    gen = generator(host, Budget(max_samples=3))
    [cands] = gen.sample(["Q"], n=8)
    assert len(cands) == 3 and sum(c[1] for c in gen.calls) == 3


def test_host_needs_a_url():
    cfg = validate({"host": {"name": "vllm"}}, metagen_plugins.get_registry())
    with pytest.raises(metagen_plugins.HostError, match=r'set \[host\] url = "http://127.0.0.1:8000"'):
        ScriptedHost(cfg, metagen_plugins.get_registry())


def test_token_healing_is_refused_by_a_host_that_sends_text():
    """[generation] token_healing needs the prompt's tokens: a remote host says so, before any
    request, and for a per-prompt configuration too."""
    registry = metagen_plugins.get_registry()
    healing = validate({"host": {"name": "vllm", "url": "http://127.0.0.1:1"}, "generation": {"token_healing": True}},
                       registry)
    with pytest.raises(metagen_plugins.HostError, match="token_healing = true regrows the prompt's last token, "
                                                        "which the vllm host cannot"):
        ScriptedHost(healing, registry)
    plain = ScriptedHost(validate({"host": dict(healing.host)}, registry), registry)
    try:
        with pytest.raises(metagen_plugins.HostError, match="token_healing"):
            plain.generator(Budget(), healing)
    finally:
        plain.close()
