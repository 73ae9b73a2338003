"""Hosts are plugins: ``register_hosts`` adds a host with its settings schema, factory and
realiser key, and metagen runs on it with no edit of its own code."""

from __future__ import annotations

import pytest

import metagen_plugins
from metagen_plugins.errors import ConfigError
from fixture_plugins import plugins_dir, source

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


def test_without_the_plugin_the_host_is_unknown_and_its_realiser_key_is_not_metadata(registry):
    reg = registry()
    with pytest.raises(ConfigError, match=r"\[host\] name 'echo' is not a host; the installed hosts are "
                                          r"tgi, transformers, vllm\b"):
        metagen_plugins.validate({"host": {"name": "echo"}}, reg)


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


def test_the_built_in_hosts_register_through_the_hook(registry):
    """The in-process host and each serving engine are built-in plugins of their own; an engine's
    package registers its host, its realisations of the built-in components and its command."""
    reg = registry()
    for engine in ("transformers", "vllm", "tgi"):
        record = reg.manager.records[f"metagen_plugins.engines.{engine}"]
        assert record.components["hosts"] == [engine]
    for engine in ("vllm", "tgi"):
        record = reg.manager.records[f"metagen_plugins.engines.{engine}"]
        assert record.components["hosts"] == record.components["commands"] == [engine]
        assert record.hooks == ["register_commands", "register_hosts"]
        assert reg.commands[engine].plugin == record.name and reg.host(engine).deploy is None
    assert reg.host("transformers").in_process and not reg.host("vllm").in_process
    assert reg.get("logits_processors", "min_p").hosts[:3] == ("transformers", "vllm", "openai")
    assert "tgi" not in reg.get("logits_processors", "min_p").hosts
    # the engines' realisations of the built-in components, registered with their hosts
    config = metagen_plugins.validate({"host": {"name": "tgi", "url": "http://127.0.0.1:1"},
                                       "processors": [{"name": "top_p", "top_p": 0.9}, {"name": "watermark"}],
                                       "stopping": [{"name": "token_budget", "max_tokens": 5},
                                                    {"name": "step_delimiter"}]}, reg)
    from metagen_plugins.hostkit import realised

    assert [v for _, v in realised(config, reg, "tgi")] == [{"top_p": 0.9}, {"watermark": True},
                                                             {"max_new_tokens": 5}, {"stop": ["\n"]}]


def test_a_components_own_realiser_wins_over_its_hosts_and_false_keeps_it_off(tmp_path, registry):
    """An outside plugin's ``vllm=`` keeps working (and wins over what the engine registers for a
    component of that name); ``vllm=False`` keeps it off the host the engine would realise it on."""
    (tmp_path / "own.py").write_text(
        "from metagen_hooks import hookimpl\n\n"
        "@hookimpl\ndef register_logits_processors(register):\n"
        "    register('mine', lambda k: None, vllm=lambda k: {'top_k': k})\n"
        "    register('both', lambda: None, relay2=lambda: {'own': True})\n\n"
        "@hookimpl\ndef register_hosts(register):\n"
        "    register('relay2', lambda *a, **k: None, settings={}, realisations={'processors': {'mine': "
        "lambda k: {'relayed': k}, 'top_k': lambda top_k: {'k': top_k}, 'both': lambda: {'table': True}}})\n\n"
        "@hookimpl\ndef register_stopping_criteria(register):\n"
        "    register('never_remote', lambda: None, vllm=False, relay2=False)\n")
    reg = registry(plugins_dir=tmp_path)
    from metagen_plugins.hostkit import realised

    config = metagen_plugins.validate({"host": {"name": "vllm", "url": "http://127.0.0.1:1"},
                                       "processors": [{"name": "mine", "k": 3}]}, reg)
    assert [v for _, v in realised(config, reg, "vllm")] == [{"top_k": 3}]
    relayed = metagen_plugins.validate({"host": {"name": "relay2"}, "processors": [
        {"name": "mine", "k": 3}, {"name": "top_k", "top_k": 2}, {"name": "both"}]}, reg)
    assert [v for _, v in realised(relayed, reg, "relay2")] == [{"relayed": 3}, {"k": 2}, {"own": True}]
    assert reg.get("stopping_criteria", "never_remote").hosts == ("transformers",)


def test_a_host_plugins_deploy_tooling_becomes_a_subcommand(tmp_path, capsys):
    """``deploy=`` names a module with add_arguments/main: the command line offers it as
    ``metagen <host> ...``; a module that fails to load is reported and leaves the rest working."""
    from metagen_plugins.cli import main

    (tmp_path / "echo_host.py").write_text(source("echo_host").replace(
        'register("echo", EchoHost, settings={"reply": str, "times": int})',
        'register("echo", EchoHost, settings={"reply": str, "times": int}, deploy="echo_tools")\n'
        '    register("broken", EchoHost, settings={}, deploy="no_such_module_here")'))
    plugins_dir(tmp_path / "tools", "echo_tools")
    import sys

    sys.path.insert(0, str(tmp_path / "tools"))
    try:
        assert main(["--plugins-dir", str(tmp_path), "echo", "--shout"]) == 0
    finally:
        sys.path.remove(str(tmp_path / "tools"))
    out = capsys.readouterr()
    assert out.out.strip() == "ECHO echo_host"
    assert "deploy='no_such_module_here', which failed to load" in out.err


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


def test_a_host_reads_its_fallback_keys_after_its_own(tmp_path, registry):
    """``fallback=``: a component with no realiser for the host's own key is read as the fallback
    key's; its own key wins where both exist, and ``<key>=False`` keeps a component off it."""
    (tmp_path / "relay.py").write_text(
        "from metagen_hooks import hookimpl\n\n"
        "@hookimpl\ndef register_hosts(register):\n"
        "    register('relay', lambda *a, **k: None, settings={}, fallback=('vllm',))\n\n"
        "@hookimpl\ndef register_logits_processors(register):\n"
        "    register('mine', lambda: None, vllm=lambda: {'a': 1}, relay=lambda: {'b': 2})\n"
        "    register('not_here', lambda: None, vllm=lambda: {'a': 1}, relay=False)\n")
    reg = registry(plugins_dir=tmp_path)
    assert reg.host("relay").keys == ("relay", "vllm")
    assert "relay" in reg.get("logits_processors", "top_k").hosts  # vLLM's realisation
    assert "relay" not in reg.get("logits_processors", "not_here").hosts
    from metagen_plugins.hostkit import realised

    config = metagen_plugins.validate({"host": {"name": "relay"}, "processors": [{"name": "mine"}, {"name": "top_k",
                                                                                                   "top_k": 5}]}, reg)
    assert [values for _, values in realised(config, reg, "relay")] == [{"b": 2}, {"top_k": 5}]


def test_a_plugins_command_becomes_a_subcommand(tmp_path, capsys):
    """register_commands: ``metagen <name> ...`` parses with the plugin's arguments and runs its
    main with the registry; its error is printed like metagen's own; a command taking one of
    metagen's names, or another plugin's, fails that plugin and leaves the rest working."""
    from metagen_plugins.cli import main

    plugins_dir(tmp_path, "echo_command")
    (tmp_path / "takes_run.py").write_text(
        "from metagen_hooks import hookimpl\n\n@hookimpl\ndef register_commands(register):\n"
        "    register('run', lambda p: None, lambda a, r: 0)\n")
    (tmp_path / "twice.py").write_text(
        "from metagen_hooks import hookimpl\n\n@hookimpl\ndef register_commands(register):\n"
        "    register('echo-tools', lambda p: None, lambda a, r: 0)\n")
    assert main(["--plugins-dir", str(tmp_path), "echo-tools", "hi", "there", "--shout"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("HI THERE | tgi, transformers, vllm")  # (and any host installed besides)
    assert "plugin 'takes_run'" in out.err and "the command 'run', which is metagen's own" in out.err
    assert "command 'echo-tools' is registered by plugin 'echo_command' and plugin 'twice'" in out.err
    assert main(["--plugins-dir", str(tmp_path), "echo-tools", "fail"]) == 2
    assert "error: echo-tools: 'fail' is not a word to echo" in capsys.readouterr().err
