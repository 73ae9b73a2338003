"""What a run's components read of the samples' log-probabilities (``reads_logprobs=``, a
registration declaration): the registry records it, ``components.reads_logprobs`` answers for a
configuration (a scorer or strategy that declares nothing counts as reading them; a nested
strategy answers for itself), and a declaration where none belongs is refused. The hosts' use of
it is tested with each host (tests/engines/vllm/test_logprobs.py, the openai plugin's tests)."""

import pytest

import metagen_plugins
from tests.plugins import source
from metagen_plugins import PluginError
from metagen_plugins.components import reads_logprobs


def reads(reg, **sections) -> bool:
    config = metagen_plugins.validate({"host": {"name": "vllm", "url": "http://127.0.0.1:9", "model": "m"},
                                       **sections}, reg)
    return reads_logprobs(config, reg)


@pytest.fixture
def outside(install_plugin, registry):
    install_plugin("metagen_logprob_readers", source("logprob_readers"))
    return registry()


def test_the_built_in_components_need_no_log_probabilities_unless_they_read_them(outside):
    sampled = {"processors": [{"name": "temperature", "temperature": 0.8}, {"name": "top_p", "top_p": 0.9}],
               "stopping": [{"name": "stop_strings", "stop": ["\n"]}, {"name": "confidence", "threshold": -2.0}]}
    assert not reads(outside)  # generate
    assert not reads(outside, strategy={"name": "self_consistency", "n": 4}, **sampled)
    assert not reads(outside, strategy={"name": "best_of_n", "n": 4}, scorer={"name": "step_checker"})
    assert reads(outside, strategy={"name": "best_of_n", "n": 4}, scorer={"name": "logprob"})
    assert reads(outside, strategy={"name": "deepconf"})  # confidences from log-probabilities


def test_a_composition_reads_what_its_strategies_read(outside):
    inner, outer = {"name": "best_of_n", "n": 2}, {"name": "self_consistency", "n": 3}
    assert not reads(outside, strategy={"name": "compose", "inner": inner, "outer": outer})
    assert reads(outside, strategy={"name": "compose", "inner": {"name": "deepconf"}, "outer": outer})
    assert reads(outside, strategy={"name": "compose", "inner": inner, "outer": {"name": "first_of"}})
    stages = [{"template": "{prompt}"}, {"template": "{previous}", "strategy": {"name": "esc"}}]
    assert not reads(outside, strategy={"name": "chain", "stages": stages})
    assert reads(outside, strategy={"name": "chain", "stages": [*stages, {"template": "{previous}",
                                                                           "strategy": {"name": "deepconf"}}]})


def test_an_outside_component_that_declares_nothing_is_taken_to_read_them(outside):
    assert reads(outside, scorer={"name": "surest"}, strategy={"name": "best_of_n"})
    assert reads(outside, strategy={"name": "first_of"})
    assert not reads(outside, scorer={"name": "longest"}, strategy={"name": "best_of_n"})
    assert reads(outside, strategy={"name": "picky", "by_confidence": True})  # a callable declaration
    assert not reads(outside, strategy={"name": "picky"})
    described = {name: metagen_plugins.components(kind)[name]["reads_logprobs"]
                 for kind, name in (("scorers", "surest"), ("scorers", "longest"), ("strategies", "picky"),
                                    ("logits_processors", "temperature"))}
    assert described == {"surest": True, "longest": False, "picky": "depends on its parameters",
                         "temperature": False}


def test_a_declaration_where_none_belongs_is_refused_naming_the_plugin(install_plugin, registry, monkeypatch):
    install_plugin("metagen_bad_reads", source("bad_reads"))
    monkeypatch.setenv("METAGEN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"metagen_bad_reads.*'noop' with reads_logprobs=; only scorers and "
                                          r"strategies declare it"):
        registry()


def test_a_failing_callable_declaration_names_the_component(outside, monkeypatch):
    info = outside.get("strategies", "picky")
    monkeypatch.setattr(info, "reads_logprobs", lambda n=2, **_: {}[n])
    with pytest.raises(PluginError, match=r"strategy 'picky' \(plugin 'metagen_logprob_readers'.*reads_logprobs= "
                                          r"callable failed on parameters \{'n': 3\}: KeyError"):
        reads(outside, strategy={"name": "picky", "n": 3})
