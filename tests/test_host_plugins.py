"""Hosts are plugins: ``register_hosts`` adds a host with its settings schema, factory, realiser
key and declared capabilities, each checked, and metagen runs on it with no edit of its own
code. (What the registry records of hosts and how it settles realisers: test_registry.py; a
host's ``deploy=`` tooling on the command line: tests/cli/test_plugin_commands.py.)"""

from __future__ import annotations

import pytest

import metagen_plugins
from metagen_plugins.errors import ConfigError
from tests.plugins import plugins_dir, source

# A fixture plugin, a real file: copied into a test's plugins directory.


def test_a_plugin_host_runs_a_strategy_with_its_own_settings_and_realisations(tmp_path, registry):
    reg = registry(plugins_dir=plugins_dir(tmp_path, "echo_host"))
    host = reg.host("echo")
    assert (host.plugin, host.realiser, host.in_process) == ("echo_host", "echo", False)
    assert reg.get("logits_processors", "shout").hosts == ("transformers", "echo")  # (in-process, its own)
    assert "echo" in reg.get("scorers", "exact_match").hosts  # client-side kinds run on every host
    assert "echo" not in reg.get("logits_processors", "top_k").hosts

    config = {"host": {"name": "echo", "reply": "hi"}, "processors": [{"name": "shout"}],
              "strategy": {"name": "self_consistency", "n": 3}}
    result = metagen_plugins.run(config, "2+2?", registry=reg)
    assert len(result.candidates) == 3 and result.best.text == "hi shout=True"
    assert result.budget.samples == 3

    with pytest.raises(ConfigError, match=r"\[host\] \(name = 'echo'\) has no setting 'replay'; did you mean 'reply'"):
        metagen_plugins.validate({"host": {"name": "echo", "replay": "x"}}, reg)
    with pytest.raises(ConfigError, match=r"\[host\] \(name = 'echo'\) times must be int, got str"):
        metagen_plugins.validate({"host": {"name": "echo", "times": "3"}}, reg)
    with pytest.raises(ConfigError, match="'top_k'.* cannot run on the echo host; it runs on tgi, transformers, vllm"):
        metagen_plugins.validate({"host": {"name": "echo"}, "processors": [{"name": "top_k", "top_k": 3}]}, reg)


@pytest.mark.parametrize("body, message", [
    ('register("vllm", lambda *a, **k: None, settings={})', "host 'vllm' is registered by plugin "
                                                            "'metagen_plugins.engines.vllm' and plugin 'bad_host'"),
    ('register("x", lambda *a, **k: None, settings={}, realisations={"processor": {}})',
     "realisations={'processor': {}}; give a dict of section (processors or stopping)"),
    ('register("x", lambda *a, **k: None, settings={}, realisations={"processors": {"top_k": 3}})',
     "realisations['processors']['top_k'] = 3, which is not a callable"),
    ('register("x", lambda *a, **k: None, settings=["url"])', "with settings=['url']; give a dict"),
    ('register("x", lambda *a, **k: None, settings={"name": str})', "a setting called 'name'"),
    ('register("x", lambda *a, **k: None, settings={}, realiser="doc")', "realiser='doc'"),
    ('register("x y", lambda *a, **k: None, settings={})', "use an identifier"),
    ('register("x", lambda *a, **k: None, settings={}, capabilities={"stop_strings": True})',
     "give a metagen_hooks.Capabilities(...)"),
    ('register("x", lambda *a, **k: None, settings={}, in_process=True, capabilities=Capabilities())',
     "declare it once, in Capabilities(in_process=True)"),
    ('register("x", lambda *a, **k: None, settings={}, capabilities=Capabilities(concurrency=0))',
     "Capabilities.concurrency (prompts in flight by default) must be an int >= 1"),
    ('register("x", lambda *a, **k: None, settings={}, fallback="vllm")', "with fallback='vllm'; give a tuple"),
])
def test_a_bad_host_registration_fails_its_plugin_not_metagen(tmp_path, registry, body, message):
    (tmp_path / "bad_host.py").write_text(
        f"from metagen_hooks import Capabilities, hookimpl\n\n@hookimpl\ndef register_hosts(register):\n    {body}\n")
    reg = registry(plugins_dir=tmp_path)
    record = reg.manager.records["bad_host"]
    assert record.status == "FAILED" and message in record.error
    assert list(reg.hosts)[:3] == ["tgi", "transformers", "vllm"]


def test_a_host_with_stop_strings_and_no_processors_runs_the_stop_string_components(tmp_path, registry):
    """A host that declares Capabilities(stop_strings=True) and realises no processor: the
    components that amount to stop strings (stop_strings, step_delimiter) run on it with no
    realiser of their own; processors and the other stopping criteria are refused, named."""
    reg = registry(plugins_dir=plugins_dir(tmp_path, "stop_host"))
    host = reg.host("stopper")
    assert host.capabilities.stop_strings and not host.in_process and host.keys == ("stopper",)
    assert "stopper" in reg.get("stopping_criteria", "stop_strings").hosts
    assert "stopper" in reg.get("stopping_criteria", "step_delimiter").hosts
    assert "stopper" not in reg.get("stopping_criteria", "regex").hosts
    assert "stopper" not in reg.get("logits_processors", "temperature").hosts

    config = {"host": {"name": "stopper", "text": "one two. three four. five"},
              "stopping": [{"name": "stop_strings", "stop": ["."]}],
              "strategy": {"name": "self_consistency", "n": 3}}
    result = metagen_plugins.run(config, "count", registry=reg)
    # seeds 0, 1, 2 start at words 0, 1, 2: each sample ends at its first "." (kept in the text)
    assert sorted(c.text for c in result.candidates) == ["one two.", "three four.", "two."]
    assert all(c.finish_reason == "stop" for c in result.candidates) and result.budget.samples == 3

    delimited = {**config, "stopping": [{"name": "step_delimiter", "delimiter": "four"}]}
    assert metagen_plugins.run(delimited, "count", registry=reg).candidates[0].text == "one two. three four"
    with pytest.raises(ConfigError, match="'temperature'.* cannot run on the stopper host"):
        metagen_plugins.validate({"host": {"name": "stopper"}, "processors": [{"name": "temperature",
                                                                             "temperature": 0.5}]}, reg)
    with pytest.raises(ConfigError, match="'regex'.* cannot run on the stopper host"):
        metagen_plugins.validate({"host": {"name": "stopper"}, "stopping": [{"name": "regex", "pattern": "x"}]}, reg)
    with metagen_plugins.Runner({"host": {"name": "stopper"}}, registry=reg) as runner:
        assert runner.concurrency == 3  # the declared default concurrency
        assert not runner.streams


def test_without_the_declaration_a_host_refuses_stop_strings(tmp_path, registry):
    """The same host registered without Capabilities(stop_strings=True): stop_strings has no
    realiser for it, so a configuration using it fails validation, before anything runs."""
    (tmp_path / "stop_host.py").write_text(source("stop_host").replace(
        "capabilities=Capabilities(stop_strings=True, concurrency=3)", "capabilities=Capabilities()"))
    reg = registry(plugins_dir=tmp_path)
    with pytest.raises(ConfigError, match="'stop_strings'.* cannot run on the stopper host; it runs on tgi, transformers"):
        metagen_plugins.validate({"host": {"name": "stopper"}, "stopping": [{"name": "stop_strings", "stop": ["."]}]},
                                 reg)
