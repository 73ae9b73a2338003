"""The registry (metagen_plugins.registry): it calls every plugin's register hooks (the hosts' and
commands' first, then each kind of component's), records who registered what, checks each
registration, settles which hosts each component runs on (its realisers), refuses a name that
two registrations claim, resolves names, and is loaded once and shared (``get_registry``).
Loading plugins is test_plugins.py's; a host plugin end to end, test_host_plugins.py's."""

import pytest

import metagen_plugins
from metagen_plugins.errors import ConfigError
from metagen_plugins.hostkit import realised
from metagen_plugins.registry import DuplicateComponent, get_registry
from tests.plugins import plugins_dir, source

GOOD = source("shout")


def plugin(hook: str, *lines: str) -> str:
    """The code of a one-hook plugin whose hook runs ``lines``."""
    return "from metagen_hooks import hookimpl\n\n@hookimpl\ndef " + hook + "(register):\n" + "".join(
        f"    {line}\n" for line in lines)


# -- what each plugin registered, recorded -----------------------------------------------------

def test_entry_point_plugin_registers_components(install_plugin, registry):
    install_plugin("metagen_shout", GOOD, dist="metagen-shout", version="2.3")
    reg = registry()
    info = reg.get("scorers", "shout")
    assert (info.plugin, info.distribution, info.version) == ("metagen_shout", "metagen-shout", "2.3")
    assert info.hosts == tuple(reg.hosts)  # a scorer runs client-side: on every installed host
    assert info.as_dict()["parameters"] == ["weight: float = 1.0"]
    assert "test scorer" in info.doc


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
    assert [v for _, v in realised(config, reg, "tgi")] == [{"top_p": 0.9}, {"watermark": True},
                                                             {"max_new_tokens": 5}, {"stop": ["\n"]}]


def test_components_api(install_plugin, registry):
    install_plugin("metagen_shout", GOOD, dist="metagen-shout", version="2.3")
    registry()
    info = metagen_plugins.components("scorers")["shout"]
    assert set(info) >= {"plugin", "distribution", "version", "hosts", "docstring"}
    hosts = metagen_plugins.components("logits_processors")["top_p"]["hosts"]
    assert hosts[:3] == ["tgi", "transformers", "vllm"]  # and any installed host reading vLLM's realisations
    assert set(hosts[3:]) <= {name for name, h in metagen_plugins.get_registry().hosts.items() if "vllm" in h.keys}
    eta = metagen_plugins.components("logits_processors")["eta"]["hosts"]
    assert eta[:2] == ["transformers", "vllm"] and "tgi" not in eta  # not TGI
    with pytest.raises(ValueError, match="kind must be one of"):
        metagen_plugins.components("processors")


def test_a_component_may_name_the_host_of_a_plugin_loaded_after_it(tmp_path, registry):
    """Every plugin's register_hosts runs before any component registers: a processor's realiser
    for the host of a plugin loaded after it is known (not 'unknown metadata') and realised."""
    (tmp_path / "a_processor.py").write_text(
        "from metagen_hooks import hookimpl\n\n"
        "def to_zed(k: int):\n    return lambda input_ids, scores: scores\n\n"
        "@hookimpl\ndef register_logits_processors(register):\n"
        "    register('to_zed', to_zed, zed=lambda k: {'k': k})\n")
    (tmp_path / "z_host.py").write_text(plugin("register_hosts", "register('zed', lambda *a, **k: None, settings={})"))
    reg = registry(plugins_dir=tmp_path)
    assert [name for name in reg.manager.records if name in ("a_processor", "z_host")] == ["a_processor", "z_host"]
    assert reg.manager.records["a_processor"].status == "loaded"
    assert reg.get("logits_processors", "to_zed").hosts == ("transformers", "zed")
    config = metagen_plugins.validate({"host": {"name": "zed"}, "processors": [{"name": "to_zed", "k": 4}]}, reg)
    assert [values for _, values in realised(config, reg, "zed")] == [{"k": 4}]


# -- registrations checked: a bad one fails its plugin, not metagen ----------------------------

def test_bad_registration_metadata_fails_the_plugin(install_plugin, registry):
    install_plugin("metagen_meta", source("bad_metadata"))
    record = registry().manager.records["metagen_meta"]
    assert record.status == "FAILED" and "unknown metadata ['tgl']" in record.error


@pytest.mark.parametrize("call, message", [
    ('register("", Ban)', "registered a logits_processors component with name ''; use a non-empty str"),
    ('register("x", 3)', "registered 'x' with a factory that is not callable: 3"),
    ('register("x", Ban, stop_strings=["."])', "registered 'x' with stop_strings= that is not callable; give a callable"),
    ('register("x", Ban, caller="token")', "registered 'x' with caller='token'; give the names of the parameters"),
    ('register("x", Ban, caller=("n",))', "registered 'x' with caller= naming ['n'], which its factory does not "
                                          "take; its parameters are token"),
    ('register("x", Ban, tgi=True)', "registered 'x' with tgi= that is not callable"),
])
def test_a_bad_component_registration_fails_its_plugin_and_says_what_to_give(tmp_path, registry, call, message):
    """Each registration is checked as it is made: a bad one fails the plugin that made it (with
    what it registered in that hook), naming the plugin, and the rest of metagen loads."""
    (tmp_path / "bad.py").write_text(
        "from metagen_hooks import hookimpl\n\n"
        "class Ban:\n    def __init__(self, token: int = 0):\n        self.token = token\n\n"
        "@hookimpl\ndef register_logits_processors(register):\n"
        f"    register('fine', Ban)\n    {call}\n")
    reg = registry(plugins_dir=tmp_path)
    record = reg.manager.records["bad"]
    assert record.status == "FAILED" and "register_logits_processors raised PluginError: plugin 'bad'" in record.error
    assert message in record.error
    assert "fine" not in reg.components["logits_processors"] and reg.get("logits_processors", "top_p")


def test_plugin_raising_inside_its_hook_is_isolated(install_plugin, registry):
    install_plugin("metagen_shout", GOOD)
    install_plugin("metagen_raiser", source("raiser"))
    reg = registry()
    record = reg.manager.records["metagen_raiser"]
    assert record.status == "FAILED"
    assert "register_strategies raised KeyError" in record.error
    assert reg.get("scorers", "shout") and reg.get("strategies", "generate")


def test_a_hook_that_registers_then_raises_adds_nothing(install_plugin, registry, capsys):
    install_plugin("metagen_half", source("registers_then_raises"), dist="metagen-half", version="2.0")
    reg = registry()
    assert "half_done" not in reg.components["scorers"]
    assert reg.manager.records["metagen_half"].status == "FAILED"
    assert "metagen-half 2.0" in capsys.readouterr().err
    assert reg.get("scorers", "logprob")  # the others are untouched


# -- one name, one registration ---------------------------------------------------------------

def test_duplicate_name_is_an_error_naming_both_distributions(install_plugin, registry):
    install_plugin("metagen_shout", GOOD, dist="metagen-shout")
    install_plugin("metagen_shout_two", GOOD.replace("Shout", "Other"), dist="metagen-shout-two")
    reg = registry()
    with pytest.raises(DuplicateComponent) as err:
        reg.get("scorers", "shout")
    assert "metagen-shout" in str(err.value) and "metagen-shout-two" in str(err.value)
    assert "METAGEN_DISABLE_PLUGINS" in str(err.value)
    assert "shout" not in reg.components["scorers"]  # neither silently wins


def test_a_plugin_cannot_replace_a_builtin_component(install_plugin, registry):
    install_plugin("metagen_hijack", source("hijack"), dist="metagen-hijack")
    reg = registry()
    with pytest.raises(DuplicateComponent, match="metagen-plugins.*metagen-hijack"):
        reg.get("logits_processors", "top_p")


def test_a_plugin_cannot_replace_a_component_by_registering_it_twice(install_plugin, registry):
    install_plugin("metagen_twice", source("registers_twice"), dist="metagen-twice")
    with pytest.raises(DuplicateComponent, match="'same' is registered by plugin 'metagen_twice'"):
        registry().get("scorers", "same")


def test_a_third_registration_does_not_win_a_conflict(install_plugin, registry):
    for module in ("metagen_one", "metagen_two", "metagen_three"):
        install_plugin(module, source("contested"), dist=module.replace("_", "-"))
    reg = registry()
    with pytest.raises(DuplicateComponent) as caught:
        reg.get("scorers", "contested")
    assert all(d in str(caught.value) for d in ("metagen-one", "metagen-two", "metagen-three"))
    assert "contested" not in reg.components["scorers"]


def test_a_command_cannot_take_the_name_of_a_hosts_deploy_tooling(tmp_path, registry):
    """A host registered with ``deploy=`` is offered as ``metagen <host> ...``: another plugin's
    command of that name fails that plugin, naming both; the host keeps its tooling."""
    (tmp_path / "a_host.py").write_text(
        plugin("register_hosts", "register('zed', lambda *a, **k: None, settings={}, deploy='zed_tools')"))
    (tmp_path / "b_command.py").write_text(
        plugin("register_commands", "register('zed', lambda parser: None, lambda args, registry: 0)"))
    reg = registry(plugins_dir=tmp_path)
    record = reg.manager.records["b_command"]
    assert record.status == "FAILED"
    assert "command 'zed' is registered by plugin 'a_host' and plugin 'b_command'" in record.error
    assert "zed" not in reg.commands and reg.host("zed").deploy == "zed_tools"


# -- realisers: the hosts a component runs on --------------------------------------------------

def test_without_the_plugin_the_host_is_unknown_and_its_realiser_key_is_not_metadata(registry):
    reg = registry()
    with pytest.raises(ConfigError, match=r"\[host\] name 'echo' is not a host; the installed hosts are "
                                          r"tgi, transformers, vllm\b"):
        metagen_plugins.validate({"host": {"name": "echo"}}, reg)


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
    config = metagen_plugins.validate({"host": {"name": "vllm", "url": "http://127.0.0.1:1"},
                                       "processors": [{"name": "mine", "k": 3}]}, reg)
    assert [v for _, v in realised(config, reg, "vllm")] == [{"top_k": 3}]
    relayed = metagen_plugins.validate({"host": {"name": "relay2"}, "processors": [
        {"name": "mine", "k": 3}, {"name": "top_k", "top_k": 2}, {"name": "both"}]}, reg)
    assert [v for _, v in realised(relayed, reg, "relay2")] == [{"relayed": 3}, {"k": 2}, {"own": True}]
    assert reg.get("stopping_criteria", "never_remote").hosts == ("transformers",)


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
    config = metagen_plugins.validate({"host": {"name": "relay"}, "processors": [{"name": "mine"}, {"name": "top_k",
                                                                                                   "top_k": 5}]}, reg)
    assert [values for _, values in realised(config, reg, "relay")] == [{"b": 2}, {"top_k": 5}]


# -- the shared registry -----------------------------------------------------------------------

def test_the_registry_is_loaded_once_and_shared_until_reloaded_or_given_another_directory(tmp_path):
    first = get_registry()
    assert get_registry() is first  # the plugins are loaded once
    with_dir = get_registry(plugins_dir=plugins_dir(tmp_path / "a", "shout"))
    assert with_dir is not first and with_dir.get("scorers", "shout").plugin == "shout"
    assert get_registry() is with_dir  # no directory given: the one loaded, with that directory's plugins
    assert get_registry(plugins_dir=str(tmp_path / "a")) is with_dir  # the same directory: not loaded again
    other = get_registry(plugins_dir=plugins_dir(tmp_path / "b"))
    assert other is not with_dir and "shout" not in other.components["scorers"]
    reloaded = get_registry(reload=True)
    assert reloaded is not other and get_registry() is reloaded
