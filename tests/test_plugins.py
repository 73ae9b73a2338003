"""The plugin manager with real entry points: loading, failures, duplicates, disabling."""

import pytest

from metagen_plugins import PluginError
from fixture_plugins import source
from metagen_plugins.registry import DuplicateComponent

GOOD = source("shout")


def test_builtin_plugin_is_loaded(registry):
    reg = registry()
    record = reg.manager.records["metagen_plugins.builtin"]
    assert record.status == "loaded"
    assert "top_p" in record.components["logits_processors"]
    assert reg.get("strategies", "generate").distribution == "metagen-plugins"


def test_entry_point_plugin_registers_components(install_plugin, registry):
    install_plugin("metagen_shout", GOOD, dist="metagen-shout", version="2.3")
    reg = registry()
    info = reg.get("scorers", "shout")
    assert (info.plugin, info.distribution, info.version) == ("metagen_shout", "metagen-shout", "2.3")
    assert info.hosts == tuple(reg.hosts)  # a scorer runs client-side: on every installed host
    assert info.as_dict()["parameters"] == ["weight: float = 1.0"]
    assert "test scorer" in info.doc


def test_broken_plugin_is_reported_and_others_keep_working(install_plugin, registry, capsys):
    install_plugin("metagen_shout", GOOD)
    install_plugin("metagen_broken", source("missing_dependency"), dist="metagen-broken", version="0.9")
    reg = registry()
    record = reg.manager.records["metagen_broken"]
    assert record.status == "FAILED"
    assert "ModuleNotFoundError" in record.error and "not_a_module_anywhere" in record.error
    assert (record.distribution, record.version) == ("metagen-broken", "0.9")
    assert "metagen-broken 0.9" in capsys.readouterr().err
    assert reg.get("scorers", "shout")  # the good plugin is unaffected


def test_strict_mode_turns_a_load_failure_into_an_error(install_plugin, registry, monkeypatch):
    install_plugin("metagen_broken", source("raises_on_import"))
    monkeypatch.setenv("METAGEN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="metagen_broken.*boom at import"):
        registry()


def test_plugin_raising_inside_its_hook_is_isolated(install_plugin, registry):
    install_plugin("metagen_shout", GOOD)
    install_plugin("metagen_raiser", source("raiser"))
    reg = registry()
    record = reg.manager.records["metagen_raiser"]
    assert record.status == "FAILED"
    assert "register_strategies raised KeyError" in record.error
    assert reg.get("scorers", "shout") and reg.get("strategies", "generate")


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


def test_disabled_plugin_is_not_loaded(install_plugin, registry, monkeypatch):
    install_plugin("metagen_shout", GOOD)
    monkeypatch.setenv("METAGEN_DISABLE_PLUGINS", "other, metagen_shout")
    reg = registry()
    assert reg.manager.records["metagen_shout"].status == "disabled"
    assert "shout" not in reg.components["scorers"]


def test_unknown_hook_is_a_validation_error_naming_plugin_and_hook(install_plugin, registry):
    install_plugin("metagen_typo", source("typo_hook"))
    reg = registry()
    record = reg.manager.records["metagen_typo"]
    assert record.status == "FAILED"
    assert "unknown hook(s) register_scorer" in record.error
    assert "register_scorers" in record.error


def test_bad_registration_metadata_fails_the_plugin(install_plugin, registry):
    install_plugin("metagen_meta", source("bad_metadata"))
    record = registry().manager.records["metagen_meta"]
    assert record.status == "FAILED" and "unknown metadata ['tgl']" in record.error


def test_plugins_dir_loads_local_files(tmp_path, registry):
    (tmp_path / "local_thing.py").write_text(GOOD.replace('"shout"', '"local_shout"'))
    reg = registry(plugins_dir=tmp_path)
    assert reg.manager.records["local_thing"].source.startswith("file ")
    assert reg.get("scorers", "local_shout").plugin == "local_thing"


def test_plugins_dir_that_does_not_exist(tmp_path, registry):
    with pytest.raises(PluginError, match="not a directory"):
        registry(plugins_dir=tmp_path / "missing")


def test_components_api(install_plugin, registry):
    import metagen_plugins

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
