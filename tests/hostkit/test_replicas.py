"""The remote hosts' shared request path over real sockets: one in-flight limit for the whole host
across every prompt, several replicas balanced by least in-flight requests, failover when a
replica dies mid-run (nothing lost, nothing charged twice), and the cool-down of a failed replica.

The servers are loopback stand-ins (tests/fakes/completions_server.py for vLLM's /v1/completions,
tests/fakes/tgi_server.py for TGI), so a replica can be killed on cue;
tests/engines/vllm/test_replicas.py has the slow test with two real vLLM servers.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

import metagen_plugins
from metagen_plugins.errors import ConfigError, HostError
from metagen_plugins.hostkit.replicas import Replicas

from tests.fakes.completions_server import CompletionsServer
from tests.fakes.tgi_server import TGIServer

PROMPTS = [f"Q: {a}+{b}-{c}=? A:" for a, b, c in ((12, 7, 3), (40, 2, 9), (5, 5, 5), (33, 21, 8), (9, 14, 6),
                                                   (27, 3, 11), (18, 18, 1), (50, 4, 20))]


def vllm(urls, host=None, **sections):
    where = {"url": urls[0]} if len(urls) == 1 else {"urls": list(urls)}
    return {"host": {"name": "vllm", **where, "retries": 1, **(host or {})},
            "generation": {"max_new_tokens": 40, "seed": 0}, **sections}


SAMPLED = {"processors": [{"name": "temperature", "temperature": 0.8}],
           "strategy": {"name": "self_consistency", "n": 4}}


def summary(results):
    """What must not depend on which replica answered: candidates and the budget's counts."""
    return [([c.text for c in r.candidates], r.best.text if r.best else None, r.budget.samples,
             r.budget.tokens_generated, r.budget.prompt_tokens_computed) for r in results]


# -- one in-flight limit across all prompts ----------------------------------------------------


def test_the_in_flight_limit_holds_across_every_prompt_of_the_run():
    with CompletionsServer(delay=0.05) as server:
        server.gather, server.gather_timeout = 3, 1.0  # hold requests until 3 are in flight
        results = metagen_plugins.run(vllm([server.url], {"concurrency": 3}), PROMPTS * 2, concurrency=16)
    assert all(r.best is not None and r.failures == [] for r in results)
    assert len(server.requests) == 16
    assert server.peak == 3  # 16 prompts at once, never more than [host] concurrency on the server


def test_the_in_flight_limit_holds_across_prompts_and_their_samples_on_tgi():
    with TGIServer() as server:
        server.delay = 0.05
        config = {"host": {"name": "tgi", "url": server.url, "concurrency": 5},
                  "generation": {"max_new_tokens": 40, "seed": 0, "do_sample": True},
                  "strategy": {"name": "self_consistency", "n": 3}}
        results = metagen_plugins.run(config, PROMPTS, concurrency=8)
        assert server.contract_errors == []
    assert all(len(r.candidates) == 3 for r in results)
    assert len(server.requests) == 24 and server.peak == 5  # 8 prompts x 3 requests, 5 at a time


def test_the_default_limit_keeps_every_prompt_in_flight():
    with CompletionsServer() as server:
        server.gather = 24  # hold requests until 24 are in flight (5 s at most)
        metagen_plugins.run(vllm([server.url]), PROMPTS * 3, concurrency=24)
    assert server.peak == 24  # the default (one server's batch) does not hold a 24-prompt run back


# -- several replicas --------------------------------------------------------------------------


def test_requests_spread_over_replicas_by_least_in_flight():
    with CompletionsServer(delay=0.05) as a, CompletionsServer(delay=0.05) as b:
        metagen_plugins.run(vllm([a.url, b.url]), PROMPTS * 4, concurrency=8)
    assert len(a.requests) + len(b.requests) == 32
    assert abs(len(a.requests) - len(b.requests)) <= 4  # equal servers share the work


def test_a_slow_replica_gets_fewer_requests():
    with CompletionsServer(delay=0.4) as slow, CompletionsServer(delay=0.02) as fast:
        metagen_plugins.run(vllm([slow.url, fast.url]), PROMPTS * 5, concurrency=8)
    assert len(slow.requests) + len(fast.requests) == 40
    assert len(slow.requests) >= 1 and len(fast.requests) > 3 * len(slow.requests)


def test_a_replica_killed_mid_run_loses_nothing_and_charges_nothing_twice():
    prompts = PROMPTS * 3
    with CompletionsServer() as alone:
        reference = metagen_plugins.run(vllm([alone.url], **SAMPLED), prompts, concurrency=8)
    with CompletionsServer(delay=0.05) as doomed, CompletionsServer(delay=0.05) as survivor:
        doomed.die_after = 5  # its 5th request and those in flight with it get no answer
        results = metagen_plugins.run(vllm([doomed.url, survivor.url], **SAMPLED), prompts, concurrency=8)
    assert doomed.dead and 0 < doomed.answered < 12
    assert all(r.failures == [] for r in results)  # every prompt answered, in full
    assert doomed.answered + survivor.answered == len(prompts)  # one delivered answer per prompt
    assert summary(results) == summary(reference)  # same samples, same budget, as on one healthy server
    assert all(r.budget.samples == 4 for r in results)


def test_a_replica_killed_mid_run_on_tgi_loses_nothing():
    with TGIServer() as alone:
        config = {"host": {"name": "tgi", "url": alone.url},
                  "generation": {"max_new_tokens": 40, "seed": 0, "do_sample": True},
                  "strategy": {"name": "self_consistency", "n": 2}}
        reference = metagen_plugins.run(config, PROMPTS, concurrency=8)
    with TGIServer() as doomed, TGIServer() as survivor:
        doomed.delay = survivor.delay = 0.05
        config["host"] = {"name": "tgi", "urls": [doomed.url, survivor.url]}
        runner = metagen_plugins.Runner(config, concurrency=8)
        try:
            first = runner.map(PROMPTS[:4])
            doomed.httpd.shutdown()
            doomed.httpd.server_close()  # killed between batches: connections are refused
            rest = runner.map(PROMPTS[4:])
            stats = runner.host.replicas.stats()
        finally:
            runner.close()
    results = first + rest
    assert all(r.failures == [] for r in results)
    assert summary(results) == summary(reference)
    assert stats[0]["failed"] >= 1 and stats[0]["cooling_down"]


def test_all_replicas_dead_fails_every_prompt_alone_with_the_reason():
    with CompletionsServer() as a, CompletionsServer() as b:
        urls = [a.url, b.url]
    config = vllm(urls, {"retries": 0, "timeout": 5.0})
    results = metagen_plugins.run(config, PROMPTS[:2], concurrency=2)
    for result in results:
        assert result.best is None
        [failure] = [f for f in result.failures if f["kind"] == "host"]
        assert "returned no sample" in failure["error"] and "servers at " in failure["error"]
        [request] = [f for f in result.failures if f["kind"] == "connection"]  # one request, its last failure
        assert request["url"] in urls and "(after 2 attempts)" in request["error"]  # tried on both replicas


def test_a_failed_replica_cools_down_then_gets_requests_again():
    with CompletionsServer(delay=0.02) as flaky, CompletionsServer(delay=0.02) as steady:
        flaky.fail_next = [503]
        # A cool-down long enough that a loaded machine cannot outlast it between the two maps.
        runner = metagen_plugins.Runner(vllm([flaky.url, steady.url], {"cooldown": 4.0}), concurrency=1)
        try:
            runner.map(PROMPTS[:1])  # the 503 sends it to the other replica at once
            seen = len(flaky.requests)
            runner.map(PROMPTS[1:5])  # within the cool-down: all to the steady replica
            assert len(flaky.requests) == seen == 1
            time.sleep(4.2)
            runner.map(PROMPTS[5:8])  # cooled down: back in the rotation
            assert len(flaky.requests) > seen and flaky.answered >= 1
        finally:
            runner.close()


def test_pick_prefers_healthy_replicas_with_fewest_in_flight():
    pool = Replicas(["http://a:1", "http://b:1", "http://c:1"], concurrency=8, cooldown=10.0)
    a, b, c = pool.replicas
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    assert pool.pick() is b
    pool.failed(b, "connection")
    assert pool.pick() is c and pool.another_is_up(c)
    pool.failed(b, "invalid")  # a rejected request says nothing of the server
    pool.failed(c, "timeout")
    assert pool.pick() is c
    pool.failed(a, "server")
    pool.failed(c, "rate_limit", retry_after=30.0)
    assert pool.pick() is b  # none up: the first to recover (c waits for its Retry-After)
    assert pool.pick(avoid=b) is a  # not the one that just failed, when there is a choice
    pool.succeeded(c)
    assert pool.pick() is c and not pool.another_is_up(c)


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("host, message", [
    ({"url": "http://127.0.0.1:1", "urls": ["http://127.0.0.1:2"]}, r"url and urls both set.*remove url"),
    ({"urls": []}, r"\[host\] urls is empty"),
    ({"urls": ["127.0.0.1:8000"]}, r"'127.0.0.1:8000' is not an http\(s\) URL"),
    ({"urls": ["http://127.0.0.1:1", "http://127.0.0.1:1/"]}, r"lists http://127.0.0.1:1 more than once"),
    ({"url": "http://127.0.0.1:1", "concurrency": 0}, r"\[host\] concurrency \(requests in flight on the whole host\)"),
    ({"url": "http://127.0.0.1:1", "cooldown": -1.0}, r"\[host\] cooldown .* must be >= 0"),
])
@pytest.mark.parametrize("name", ["vllm", "tgi"])
def test_bad_replica_settings_fail_before_any_request(name, host, message):
    with pytest.raises(HostError, match=message):
        metagen_plugins.run({"host": {"name": name, **host}}, "Q: 1+1=? A:")


def test_urls_must_be_a_list_of_strings():
    with pytest.raises(ConfigError, match=r"\[host\] \(name = 'vllm'\) urls must be"):
        metagen_plugins.validate({"host": {"name": "vllm", "urls": "http://127.0.0.1:1"}},
                                 metagen_plugins.get_registry())


def test_serve_args_emit_vllms_data_parallel_form(tmp_path):
    from metagen_plugins.engines.vllm.deploy import serve_args

    registry = metagen_plugins.get_registry()
    config = metagen_plugins.validate({"host": {"name": "vllm", "model": "my-model", "data_parallel_size": 4}}, registry)
    args = serve_args(config)
    assert args[args.index("--data-parallel-size") + 1] == "4"
    plain = serve_args(metagen_plugins.validate({"host": {"name": "vllm", "model": "my-model"}}, registry))
    assert "--data-parallel-size" not in plain
    toml = tmp_path / "vllm.toml"
    toml.write_text('[host]\nname = "vllm"\nmodel = "my-model"\n')
    out = subprocess.run([sys.executable, "-m", "metagen_plugins.cli", "vllm", "serve-args", "--config", str(toml),
                          "--data-parallel", "2"], capture_output=True, text=True)
    assert out.returncode == 0 and "--data-parallel-size 2" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "metagen_plugins.cli", "vllm", "serve-args", "--config", str(toml),
                          "--data-parallel", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "data_parallel_size" in bad.stderr and "must be an int >= 1" in bad.stderr


def test_a_data_parallel_server_gets_a_larger_default_limit():
    registry = metagen_plugins.get_registry()
    from metagen_plugins.engines.vllm.host import VLLMHost

    one = VLLMHost(metagen_plugins.validate({"host": {"name": "vllm", "url": "http://127.0.0.1:1"}}, registry), registry)
    four = VLLMHost(metagen_plugins.validate({"host": {"name": "vllm", "urls": ["http://127.0.0.1:1", "http://127.0.0.1:2"],
                                                       "data_parallel_size": 4}}, registry), registry)
    try:
        assert four.replicas.concurrency == 8 * one.replicas.concurrency  # per engine replica, per server
    finally:
        one.close()
        four.close()


def test_logprobs_can_be_left_to_the_server_when_nothing_reads_them():
    with CompletionsServer() as server:
        [kept, without] = [metagen_plugins.run(vllm([server.url], {"logprobs": flag}, **SAMPLED), PROMPTS[:2])
                           for flag in (True, False)]
    assert "logprobs" in server.requests[0] and all("logprobs" not in b for b in server.requests[2:])
    assert summary(kept) == summary(without)  # the same samples, votes and budgets
    assert all(c.logprobs for r in kept for c in r.candidates)
    assert all(c.logprobs == [] for r in without for c in r.candidates)
    with pytest.raises(HostError, match=r"\[scorer\] logprob reads the candidates' token log-probabilities, "
                                        r"and \[host\] logprobs = false .* remove logprobs = false"):
        metagen_plugins.run(vllm([server.url], {"logprobs": False}, scorer={"name": "logprob"},
                                 strategy={"name": "best_of_n", "n": 2}), PROMPTS[0])
