"""The plugin manager (metagen_plugins.plugins) with real entry points and local files: loading,
load failures, strict mode, disabling, plugin names. What the registry makes of what plugins
register (records, conflicts, realisers) is test_registry.py's."""

import pytest

from metagen_plugins import PluginError
from tests.plugins import source

GOOD = source("shout")


def test_builtin_plugin_is_loaded(registry):
    reg = registry()
    record = reg.manager.records["metagen_plugins.builtin"]
    assert record.status == "loaded"
    assert "top_p" in record.components["logits_processors"]
    assert reg.get("strategies", "generate").distribution == "metagen-plugins"


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


def test_plugins_dir_loads_local_files(tmp_path, registry):
    (tmp_path / "local_thing.py").write_text(GOOD.replace('"shout"', '"local_shout"'))
    reg = registry(plugins_dir=tmp_path)
    assert reg.manager.records["local_thing"].source.startswith("file ")
    assert reg.get("scorers", "local_shout").plugin == "local_thing"


def test_plugins_dir_that_does_not_exist(tmp_path, registry):
    with pytest.raises(PluginError, match="not a directory"):
        registry(plugins_dir=tmp_path / "missing")


def test_the_built_in_plugins_cannot_be_disabled(registry, monkeypatch):
    """METAGEN_DISABLE_PLUGINS blocks outside plugins only: metagen without its own components,
    host and engines would not run at all."""
    monkeypatch.setenv("METAGEN_DISABLE_PLUGINS", "metagen_plugins.builtin,metagen_plugins.engines.vllm")
    reg = registry()
    assert reg.manager.records["metagen_plugins.builtin"].status == "loaded"
    assert reg.manager.records["metagen_plugins.engines.vllm"].status == "loaded"
    assert reg.get("strategies", "generate") and reg.host("vllm")


def test_an_entry_point_name_taken_by_another_distribution_fails_the_second(install_plugin, registry, capsys):
    install_plugin("metagen_first", source("empty"), dist="metagen-first",
                   entry_name="shared_name")
    install_plugin("metagen_second", source("empty"), dist="metagen-second",
                   entry_name="shared_name")
    reg = registry()
    record = reg.manager.records["shared_name"]
    assert record.status == "FAILED" and "already loaded" in record.error
    assert "metagen-first" in record.error or "metagen-second" in record.error

