"""Samples watched and cancelled as they decode on the remote hosts (metagen_hooks.inflight over
hostkit/remote_watch.py): each watched sample is its own streamed request, a cancelled one's
stream is closed (the server stops it), it comes back cancelled with what it had, the others are
what an unwatched seeded run draws, and the budget counts what came.

The completions stand-in (tests/fakes/completions_server.py, seeding as vLLM does) and the TGI
stand-in serve the fast tests; the slow one runs a real vLLM server (tests/fakes/vllm_server.py).
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

import metagen_plugins
from metagen_hooks import Budget, BudgetExceeded, Candidate, Watch, inflight
from metagen_hooks.answers import extract
from metagen_hooks.inflight import CANCELLED
from metagen_plugins.errors import HostError
from metagen_plugins.hostkit import RemoteGenerator

from tests.fakes.completions_server import CompletionsServer
from tests.fakes.tgi_server import TGIServer

PROMPT = "Q: 12+7-3=? A:"
SAMPLED = {"processors": [{"name": "temperature", "temperature": 0.8}], "generation": {"max_new_tokens": 40, "seed": 3}}


def make_host(config: dict, url: str | None = None, name: str = "vllm", **settings):
    """The ``name`` host for ``config`` (its ``[host]`` the one at ``url``, with ``settings``, when given)."""
    registry = metagen_plugins.get_registry()
    if url is not None:
        config = {**config, "host": {"name": name, "url": url, "retries": 1, **settings}}
    config = metagen_plugins.validate(config, registry)
    if name == "tgi":
        from metagen_plugins.engines.tgi.host import TGIHost as Host
    elif name == "openai":
        from metagen_openai.host import OpenAIHost as Host
    else:
        from metagen_plugins.engines.vllm.host import VLLMHost as Host
    return Host(config, registry)


def settled(server, timeout: float = 5.0) -> None:
    """Wait until the stand-in has no request in flight (a closed stream's handler has seen it)."""
    deadline = time.monotonic() + timeout
    while server.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)


class Recorder:
    """A watch callback that records each view's token count and cancels the samples in
    ``cancel`` once they have ``after`` tokens."""

    def __init__(self, cancel=(), after: int = 3) -> None:
        self.cancel, self.after, self.calls = set(cancel), after, []
        self.seen: dict[int, tuple] = {}

    def __call__(self, samples) -> None:
        self.calls.append([len(s.token_ids) for s in samples])
        for s in samples:
            self.seen[s.index] = (list(s.token_ids), list(s.logprobs), [list(t) for t in s.top_logprobs], s.text)
            if s.index in self.cancel and len(s.token_ids) >= self.after:
                s.cancel("seen enough")


@pytest.fixture
def server():
    with CompletionsServer(token_delay=0.02, child_seeds=True) as made:
        yield made


def test_watched_samples_grow_and_a_cancelled_one_stops_early(server):
    """Seeded sampling, 4 samples: the views grow as chunks come; sample 1, cancelled at 3
    tokens, comes back cancelled with a prefix of its unwatched self and its stream closed; the
    others equal the unwatched run; the budget counts the tokens received and the prompt once."""
    host = make_host(SAMPLED, server.url)
    try:
        plain = Budget()
        [reference] = host.generator(plain).sample([PROMPT], n=4)
        first = len(server.requests)
        watch, budget = Recorder(cancel={1}), Budget()
        [watched] = host.generator(budget).sample([PROMPT], n=4, watch=Watch(watch))
    finally:
        host.close()
    settled(server)
    bodies = server.requests[first:]
    assert [b["n"] for b in bodies] == [1] * 4 and all(b["stream"] for b in bodies)
    assert sorted(b["seed"] for b in bodies) == [3, 4, 5, 6]  # vLLM's seeds for the children of seed 3
    assert len(watch.calls) > 5 and all(a <= b for a, b in zip(watch.calls, watch.calls[1:]))  # growing
    for i, (got, ref) in enumerate(zip(watched, reference)):
        if i == 1:
            assert got.finish_reason == CANCELLED
            assert 3 <= len(got.token_ids) < len(ref.token_ids)
            assert got.token_ids == ref.token_ids[:len(got.token_ids)] and ref.text.startswith(got.text)
        else:
            assert (got.text, got.token_ids, got.logprobs, got.finish_reason) == \
                   (ref.text, ref.token_ids, ref.logprobs, ref.finish_reason)
    streams = server.streams[-4:]
    assert sum(s["closed_by_client"] for s in streams) == 1
    assert min(s["sent"] for s in streams) < min(s["total"] for s in streams)
    eos = 1  # each finished sample's end-of-sequence token was generated too
    assert budget.tokens_generated == sum(len(c.token_ids) + eos for c in reference[:1] + reference[2:]) \
        + len(watched[1].token_ids)
    assert budget.tokens_generated < plain.tokens_generated
    assert budget.prompt_tokens_computed == plain.prompt_tokens_computed  # the prompt once, as unwatched
    assert budget.samples == plain.samples == 4


def test_top_logprobs_come_with_each_token(server):
    host = make_host(SAMPLED, server.url)
    try:
        watch = Recorder()
        [out] = host.generator(Budget()).sample([PROMPT], n=2, watch=Watch(watch, top_logprobs=3))
    finally:
        host.close()
    body = server.requests[-1]
    assert body["logprobs"] == 3 and body["return_tokens_as_token_ids"] is True
    tokens, logprobs, tops, text = watch.seen[0]
    assert tokens == out[0].token_ids[:len(tokens)] and len(tokens) >= 10
    assert len(tops) == len(tokens) == len(logprobs)
    for top, lp in zip(tops, logprobs):
        assert len(top) == 3 and top == sorted(top, reverse=True) and top[0] == pytest.approx(lp)


def test_extend_watched_views_carry_the_parent_text(server):
    host = make_host(SAMPLED, server.url)
    parent = Candidate(prompt=PROMPT, text=" 12+7=19. ")
    try:
        watch = Recorder()
        [[child]] = host.generator(Budget()).extend([parent], n=1, watch=Watch(watch))
    finally:
        host.close()
    assert server.requests[-1]["prompt"] == PROMPT + parent.text
    assert child.text.startswith(parent.text) and watch.seen[0][3].startswith(parent.text)


def test_a_watch_that_raises_fails_its_call_and_closes_its_streams(server):
    host = make_host(SAMPLED, server.url)

    def watch(samples):
        if any(len(s.token_ids) >= 2 for s in samples):
            raise RuntimeError("the strategy's bug")

    try:
        with pytest.raises(RuntimeError, match="the strategy's bug"):
            host.generator(Budget()).sample([PROMPT], n=3, watch=Watch(watch))
        settled(server)
        assert all(s["closed_by_client"] for s in server.streams[-3:]) and server.in_flight == 0
        assert host.generator(Budget()).sample([PROMPT], n=1)[0][0].text  # the host still works
    finally:
        host.close()


def test_a_cancelled_run_closes_its_watched_streams(server):
    host = make_host(SAMPLED, server.url)
    budget = Budget()

    def watch(samples):
        if any(len(s.token_ids) >= 2 for s in samples):
            budget.cancel("the client went away")

    try:
        with pytest.raises(BudgetExceeded, match="went away"):
            host.generator(budget).sample([PROMPT], n=2, watch=Watch(watch))
    finally:
        host.close()
    settled(server)
    assert all(s["closed_by_client"] for s in server.streams[-2:])


def test_without_token_ids_views_count_tokens_and_candidates_keep_none(server):
    """The openai host against a server that streams no token ids (none asked for): a view's
    token_ids are one index per token received (counted by log-probs, asked for with [host]
    logprobs = true); the candidate has none, as :func:`completions.samples` leaves an answer
    without them; the budget counts the tokens."""
    pytest.importorskip("metagen_openai")
    host = make_host(SAMPLED, server.url, "openai", logprobs=True)
    try:
        [[plain]] = host.generator(Budget()).sample([PROMPT], n=1)
        watch, budget = Recorder(), Budget()
        [[got]] = host.generator(budget).sample([PROMPT], n=1, watch=Watch(watch))
    finally:
        host.close()
    assert "return_token_ids" not in server.requests[-1]
    tokens, logprobs, _, text = watch.seen[0]
    assert tokens == list(range(len(tokens))) and len(tokens) == len(logprobs) > 5
    assert (got.text, got.finish_reason, got.token_ids) == (plain.text, plain.finish_reason, [])
    assert budget.tokens_generated == len(plain.token_ids) + 1  # and the end-of-sequence token


def test_watched_samples_on_tgi_stream_and_a_cancelled_one_is_closed():
    with TGIServer() as server:
        server.token_delay = 0.02
        host = make_host(SAMPLED, server.url, "tgi")
        try:
            [reference] = host.generator(Budget()).sample([PROMPT], n=3)
            watch = Recorder(cancel={0})
            [watched] = host.generator(Budget()).sample([PROMPT], n=3, watch=Watch(watch, top_logprobs=2))
        finally:
            host.close()
        streams = server.finished_streams()[-3:]
    assert watched[0].finish_reason == CANCELLED and 3 <= len(watched[0].token_ids) < len(reference[0].token_ids)
    assert [(c.text, c.token_ids) for c in watched[1:]] == [(c.text, c.token_ids) for c in reference[1:]]
    assert sum(s["closed_by_client"] for s in streams) == 1
    assert all(len(top) == 2 for top in watch.seen[1][2])


def test_a_remote_generator_that_does_not_stream_is_watched_after_the_fact(server):
    """inflight.sample on a remote generator without watch_request: drawn whole, the callback
    sees them once, finished; passing watch= to it directly is refused."""

    class Whole(RemoteGenerator):
        async def request(self, text, n, max_new_tokens, stop, seed, replica):
            from metagen_plugins.hostkit import Sample

            return [Sample(text=" 16", token_ids=[5], logprobs=[-0.1], finish_reason="stop") for _ in range(n)]

    host = make_host(SAMPLED, server.url)
    try:
        generator, watch = Whole(host, Budget()), Recorder()
        [out] = inflight.sample(generator, [PROMPT], 2, Watch(watch))
        assert [c.text for c in out] == [" 16", " 16"] and watch.calls == [[1, 1]]
        with pytest.raises(HostError, match="does not watch"):
            generator.sample([PROMPT], 2, watch=Watch(watch))
    finally:
        host.close()


def test_esc_runs_on_the_remote_host(server):
    result = metagen_plugins.run({**SAMPLED, "host": {"name": "vllm", "url": server.url},
                                  "strategy": {"name": "esc", "n": 8, "window": 4}}, PROMPT)
    assert result.best is not None and "#### 16" in result.best.text
    assert result.budget.samples == 4  # the stand-in's samples agree: one window settles it


# -- a real vLLM server ------------------------------------------------------------------------


def metrics(url: str) -> dict[str, float]:
    """vLLM's /metrics: requests running, finished so far (an aborted one is not), tokens
    generated so far."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()

    def total(name: str, label: str = "") -> float:
        pattern = re.escape(name) + r"\{([^}]*)\} ([0-9.e+-]+)"
        return sum(float(m.group(2)) for m in re.finditer(pattern, text) if label in m.group(1))

    return {"running": total("vllm:num_requests_running"),
            "finished": total("vllm:request_success_total"),
            "generated": total("vllm:generation_tokens_total")}


def watched_pair(host, url: str, prompt: str) -> tuple[list, Budget, list[float], dict, dict]:
    """Two watched samples, the second cancelled at the first news; the server's requests
    running, sampled while the first still decodes; the server's metrics before and after."""
    before, running, budget = metrics(url), [], Budget()

    def watch(samples):
        samples[1].cancel("enough")
        if samples[0].finish_reason is None and len(running) < 50:
            running.append(metrics(url)["running"])

    [out] = host.generator(budget).sample([prompt], n=2, watch=Watch(watch))
    deadline = time.monotonic() + 10
    while metrics(url)["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return out, budget, running, before, metrics(url)


@pytest.mark.slow
def test_a_cancelled_sample_leaves_the_vllm_server_and_esc_runs_there(tmp_path):
    """On a real vLLM server: two watched samples that cannot end early (EOS banned), the
    second cancelled at the first news. While the first still decodes, the server runs one
    request; it finishes one of the two (an aborted request is not counted) and generated for
    the other little more than the client received. Then ``esc`` runs end to end on the host.

    The demo model writes a whole answer in a fraction of a second; a client on a loaded
    machine can fall so far behind that the server has finished the second sample before the
    watch cancels it: such a round is drawn again (at most 5; a server that never aborts fails
    them all)."""
    from tests.fakes.vllm_server import DEMO, VLLMServer, available

    if not available():
        pytest.skip("no vLLM environment (.venv-vllm): `make test` builds it")
    from metagen_plugins.models import load_tokenizer, resolve

    eos = load_tokenizer(resolve("demo-arith")).eos_token_id
    limit, prompt = 90, "Q: 37+48-19=? A:"
    with VLLMServer(DEMO, tmp_path / "vllm.log").wait(300) as server:
        host = make_host({"host": dict(server.host), "generation": {"max_new_tokens": limit, "seed": 1},
                          "processors": [{"name": "logit_bias", "bias": {str(eos): -100}},
                                         {"name": "temperature", "temperature": 0.8}]})
        try:
            for _ in range(5):
                out, budget, running, before, after = watched_pair(host, server.url, prompt)
                aborted = after["finished"] - before["finished"] == 1  # the other was aborted
                if aborted and 1.0 in running:  # and left while the first still decoded
                    break
        finally:
            host.close()
        assert aborted and 1.0 in running and after["running"] == 0
        assert out[1].finish_reason == CANCELLED and len(out[1].token_ids) < limit
        assert out[0].finish_reason == "length" and len(out[0].token_ids) == limit
        assert budget.tokens_generated == limit + len(out[1].token_ids)  # what came
        # the server generated what came, and at most the few steps the abort took to arrive
        assert budget.tokens_generated <= after["generated"] - before["generated"] < limit + limit // 3

        esc = metagen_plugins.run({"host": dict(server.host), "generation": {"max_new_tokens": 60, "seed": 0},
                                   "processors": [{"name": "temperature", "temperature": 0.8}],
                                   "strategy": {"name": "esc", "n": 8, "window": 4}}, prompt)
        sampled = {"host": dict(server.host), "generation": {"max_new_tokens": 60, "seed": 0},
                   "processors": [{"name": "temperature", "temperature": 0.8}]}
        # DeepConf online: top-20 log-probabilities from the server set every trace's confidence
        deep = metagen_plugins.run({**sampled, "strategy": {"name": "deepconf", "n": 8, "warmup": 4, "group": 4,
                                                            "keep": 0.5}}, prompt)
        # early rejection: steps scored by the exact step checker, wrong ones dropped
        early = metagen_plugins.run({**sampled, "strategy": {"name": "early_rejection", "n": 4, "max_steps": 4,
                                                             "step_tokens": 16},
                                     "scorer": {"name": "step_checker"}}, prompt)
    assert deep.failures == [] and deep.best is not None and len(deep.scores) == len(deep.candidates)
    assert all(s > 0 for s in deep.scores)  # -mean(top-20 log-probs): positive, so they came from the server
    assert early.failures == [] and early.best is not None and "####" in early.best.text
    [select] = [e for e in esc.trace if e["event"] == "select"]
    votes = select["votes"]
    assert esc.best is not None and esc.failures == [] and 4 <= esc.budget.samples <= 8
    assert extract(esc.best.text) == max(votes, key=votes.get)  # the majority answer
