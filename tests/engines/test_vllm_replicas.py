"""Two real vLLM servers as replicas of one model (`[host] urls`): both take requests, and when
one is killed (SIGKILL to its process group) in the middle of a run, every prompt is still
answered and charged once. Slow: two servers start (each bounded, /health polled) and both are
stopped at the end by killing the process groups this module started, nothing else.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import wait, FIRST_COMPLETED

import pytest

import metagen_plugins
from metagen_plugins.demo.train import held_out

from test_vllm_host import SERVER, VLLM_PYTHON, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test` builds it (make .venv-vllm/.installed)")
    logs = tmp_path_factory.mktemp("vllm-replica-logs")
    servers = [Server(SERVER, logs / "a.log"), Server(SERVER, logs / "b.log")]  # their startups overlap
    try:
        for server in servers:
            server.wait()
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_two_servers_share_a_run_and_one_killed_mid_run_loses_nothing(pair):
    doomed, survivor = pair
    prompts = [p.prompt for p in held_out()[:24]]
    config = {"host": {"name": "vllm", "urls": [doomed.url, survivor.url], "model": "demo-arith",
                       "concurrency": 8, "retries": 1, "cooldown": 60.0},
              "generation": {"max_new_tokens": 48}}
    with metagen_plugins.Runner(config, concurrency=8) as runner:
        first = runner.map(prompts[:8])
        before = runner.host.replicas.stats()
        futures = [runner.submit(p) for p in prompts[8:]]
        wait(futures, return_when=FIRST_COMPLETED)  # the run is under way on both servers
        os.killpg(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait(timeout=30)
        rest = [f.result() for f in futures]
        after = runner.host.replicas.stats()
    assert before[0]["sent"] > 0 and before[1]["sent"] > 0  # least in flight: both took requests
    assert after[0]["failed"] >= 1 and after[0]["cooling_down"]  # the killed one failed and sits out
    for result in first + rest:
        assert result.best is not None and result.failures == []  # every prompt answered
        [candidate] = result.candidates
        assert result.budget.samples == 1
        # charged once: the delivered answer's tokens (its end-of-sequence token included)
        assert len(candidate.token_ids) <= result.budget.tokens_generated <= len(candidate.token_ids) + 1
