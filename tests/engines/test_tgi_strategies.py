"""Every built-in strategy runs unchanged on the TGI host: the loopback server plays a model that
solves the demo arithmetic task with mistakes (tests/fakes/tgi_server.py), answering within TGI's
contract."""

from collections import Counter

import pytest

import metagen_plugins
from test_strategies import SCORERS, STRATEGIES
from tgi_server import TGIServer

PROMPT = "Q: 37+48-19=? A:"


@pytest.fixture(scope="module")
def server():
    with TGIServer() as running:
        yield running


def config(server, name):
    return {"host": {"name": "tgi", "url": server.url, "concurrency": 4},
            "generation": {"seed": 0, "max_new_tokens": 40},
            "processors": [{"name": "temperature", "temperature": 0.8}],
            "strategy": {"name": name, **STRATEGIES[name]},
            "scorer": {"name": SCORERS.get(name, "step_checker")}}


def test_the_list_covers_every_builtin_strategy():
    builtin = {name for name, info in metagen_plugins.get_registry().components["strategies"].items()
               if info.plugin == "metagen_plugins.builtin"}
    assert builtin == set(STRATEGIES)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_runs_on_tgi(server, name):
    sent = len(server.requests)
    result = metagen_plugins.run(config(server, name), PROMPT)
    assert result.failures == []
    assert result.best is not None and result.best in result.candidates
    assert "####" in result.best.text
    assert result.budget.tokens_generated > 0 and len(server.requests) > sent
    events = Counter(e["event"] for e in result.trace)
    if name not in ("compose", "chain"):
        assert events["select"] == 1
    if name in ("best_of_n", "step_beam_search", "dvts", "mcts", "self_repair"):
        assert result.best.text.endswith("#### 66")  # a checker-guided strategy finds the right answer
    assert server.contract_errors == []


@pytest.mark.parametrize("name", ["self_consistency", "step_beam_search", "particle_filtering"])
def test_a_seeded_run_is_reproducible_on_tgi(server, name):
    a = metagen_plugins.run(config(server, name), PROMPT)
    b = metagen_plugins.run(config(server, name), PROMPT)
    assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
