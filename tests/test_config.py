"""Configuration validation: every error names the field, the component and the fix."""

import pytest

import metagen_plugins
from metagen_plugins import ConfigError, validate


def check(config):
    return validate(config, metagen_plugins.get_registry(reload=True))


def test_minimal_config_is_valid_and_defaults_to_transformers():
    cfg = check({"processors": [{"name": "top_p", "top_p": 0.9}]})
    assert cfg.host_name == "transformers"
    assert cfg.processors == [{"name": "top_p", "top_p": 0.9}]


def test_unknown_component_lists_valid_names_and_suggests_nearest():
    with pytest.raises(ConfigError) as err:
        check({"processors": [{"name": "top_pp", "top_p": 0.9}]})
    message = str(err.value)
    assert "processors[0]" in message and "unknown logits processor 'top_pp'" in message
    assert "Did you mean 'top_p'?" in message
    assert "temperature" in message and "min_p" in message


def test_unknown_parameter_names_component_parameter_and_what_it_accepts():
    with pytest.raises(ConfigError) as err:
        check({"processors": [{"name": "top_p", "topp": 0.9}]})
    message = str(err.value)
    assert "'top_p'" in message and "no parameter 'topp'" in message
    assert "top_p: float (required)" in message and "min_tokens_to_keep: int = 1" in message
    assert "metagen-plugins" in message


def test_ill_typed_parameter():
    with pytest.raises(ConfigError, match=r"parameter 'top_k' must be int, got str 'ten'"):
        check({"processors": [{"name": "top_k", "top_k": "ten"}]})
    with pytest.raises(ConfigError, match=r"parameter 'top_k' must be int, got bool True"):
        check({"processors": [{"name": "top_k", "top_k": True}]})


def test_missing_required_parameter():
    with pytest.raises(ConfigError, match=r"missing required parameter\(s\) 'temperature'"):
        check({"processors": [{"name": "temperature"}]})


def test_bad_value_is_caught_before_any_model_loads():
    with pytest.raises(ConfigError, match=r"top_p.*rejected its parameters.*1.5"):
        check({"processors": [{"name": "top_p", "top_p": 1.5}]})


def test_component_on_a_host_that_cannot_realise_it_names_where_it_runs():
    with pytest.raises(ConfigError) as err:
        check({"host": {"name": "tgi", "url": "http://127.0.0.1:8080"},
               "processors": [{"name": "eta", "epsilon": 0.001}]})
    assert "cannot run on the tgi host; it runs on transformers" in str(err.value)
    check({"host": {"name": "tgi"}, "processors": [{"name": "top_p", "top_p": 0.5}]})


def test_context_parameters_cannot_be_set():
    with pytest.raises(ConfigError, match="'tokenizer' is supplied by the host"):
        check({"stopping": [{"name": "stop_strings", "stop": ["\n"], "tokenizer": "x"}]})


def test_sections_and_host_settings():
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['processor'\]; did you mean 'processors'"):
        check({"processor": [{"name": "top_p", "top_p": 0.9}]})
    with pytest.raises(ConfigError, match=r"\[host\] name 'tgl' is not a host; did you mean 'tgi'"):
        check({"host": {"name": "tgl"}})
    with pytest.raises(ConfigError, match=r"\[host\] \(name = 'transformers'\) has no setting 'modle'; did you mean 'model'"):
        check({"host": {"modle": "x"}})
    with pytest.raises(ConfigError, match=r"\[generation\] max_new_tokens must be int"):
        check({"generation": {"max_new_tokens": 1.5}})
    with pytest.raises(ConfigError, match=r"\[budget\] max_tokens must be >= 0"):
        check({"budget": {"max_tokens": -1}})
    with pytest.raises(ConfigError, match=r"processors must be a list of tables"):
        check({"processors": {"name": "top_p"}})
    with pytest.raises(ConfigError, match=r"\[strategy\] has no .name.; name one of: .*self_consistency"):
        check({"strategy": {"n": 3}})


def test_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[host]\nname = "transformers"\n\n[[processors]]\nname = "temperature"\n'
                    'temperature = 0.7\n\n[[processors]]\nname = "top_k"\ntop_k = 5\n')
    cfg = check(str(path))
    assert [p["name"] for p in cfg.processors] == ["temperature", "top_k"]
    path.write_text('[[processors]]\nname = "top_k"\ntop_k = "5"\n')
    with pytest.raises(ConfigError, match=f"in {path}: processors\\[0\\]"):
        check(path)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        check(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[host\nname=")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        check(bad)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        check(binary)
    with pytest.raises(ConfigError, match="a configuration is a dict"):
        check(42)


def test_dict_config_is_not_mutated():
    config = {"processors": [{"name": "top_p", "top_p": 0.9}]}
    check(config)
    assert config == {"processors": [{"name": "top_p", "top_p": 0.9}]}
