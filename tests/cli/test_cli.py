"""The `metagen` console script, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_plugins import plugins_dir

BIN = Path(sys.executable).parent / "metagen"


def metagen(*args, env=None, check=True):
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_version():
    assert metagen("--version").stdout.strip() == "metagen-plugins 0.1.0"


def test_plugins_list_table():
    out = metagen("plugins", "list").stdout
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "STATUS", "HOOKS"]
    builtin = next(r for r in rows if r.startswith("metagen_plugins.builtin"))
    assert "loaded" in builtin and "top_p" in builtin and "generate" in builtin


def test_plugins_list_json_shows_a_failing_local_plugin(tmp_path):
    plugins_dir(tmp_path, "broken_one")
    proc = metagen("--plugins-dir", str(tmp_path), "plugins", "list", "--json")
    records = {r["name"]: r for r in json.loads(proc.stdout)}
    assert records["broken_one"]["status"] == "FAILED"
    assert "needs a missing lib" in records["broken_one"]["error"]
    assert records["metagen_plugins.builtin"]["status"] == "loaded"
    assert "broken_one" in proc.stderr  # warned, not fatal
    hosts = {**records["metagen_plugins.engines.transformers"]["hosts"], **records["metagen_plugins.engines.vllm"]["hosts"]}
    assert hosts["transformers"]["capabilities"]["in_process"] and not hosts["vllm"]["in_process"]
    assert hosts["vllm"]["capabilities"]["stop_strings"] and hosts["vllm"]["realiser"] == "vllm"
    assert records["metagen_plugins.engines.tgi"]["components"] == {"hosts": ["tgi"], "commands": ["tgi"]}


def test_disabled_plugin_shows_as_disabled(tmp_path):
    plugins_dir(tmp_path, "quiet_one")
    proc = metagen("--plugins-dir", str(tmp_path), "plugins", "list", "--json",
                   env={"METAGEN_DISABLE_PLUGINS": "quiet_one"})
    assert {r["name"]: r["status"] for r in json.loads(proc.stdout)}["quiet_one"] == "disabled"


def test_run_plain_generation(tiny_dir, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'[host]\nmodel = "{tiny_dir}"\n\n[generation]\nmax_new_tokens = 5\n')
    proc = metagen("run", "--config", str(config), "--json", "hello", "abc")
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in results] == ["hello", "abc"]
    assert all(r["strategy"] == "generate" and len(r["best"]["token_ids"]) <= 5 for r in results)
    assert all(r["budget"]["forward_passes"] >= 1 for r in results)
    text = metagen("run", "--config", str(config), "hello").stdout
    assert text.startswith("prompt: hello\n") and "tokens generated" in text


@pytest.mark.parametrize("body,expected", [
    ('[[processors]]\nname = "top_q"\n', "unknown logits processor 'top_q'. Did you mean 'top_p'?"),
    ('[[processors]]\nname = "top_p"\ntop_p = "high"\n', "parameter 'top_p' must be float"),
    ("[host\n", "is not valid TOML"),
])
def test_run_config_errors_are_one_line_without_traceback(tmp_path, body, expected):
    config = tmp_path / "bad.toml"
    config.write_text(body)
    proc = metagen("run", "--config", str(config), "x", check=False)
    assert proc.returncode == 2
    assert expected in proc.stderr and "Traceback" not in proc.stderr


def test_run_missing_model_is_clear(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[host]\nmodel = "{tmp_path / "nowhere"}"\n')
    proc = metagen("run", "--config", str(config), "x", check=False)
    assert proc.returncode == 2 and "neither a local directory nor a built-in model" in proc.stderr


def test_trace_and_offline_reselect(tiny_dir, tmp_path):
    config = tmp_path / "sc.toml"
    config.write_text(f'''[host]
model = "{tiny_dir}"

[generation]
do_sample = true
seed = 3
max_new_tokens = 30

[[processors]]
name = "grammar"
regex = " (\\\\d[+-]\\\\d=\\\\d\\\\. )#### \\\\d"

[strategy]
name = "self_consistency"
n = 6
''')
    trace = tmp_path / "run.jsonl"
    results = [json.loads(l) for l in metagen("run", "--config", str(config), "--json", "--trace", str(trace),
                                              "Q: 1+2=? A:", "Q: 5-3=? A:").stdout.splitlines()]
    lines = [json.loads(l) for l in trace.read_text().splitlines()]
    assert [l["event"] for l in lines].count("run") == 2
    assert sum(l["event"] == "candidate" for l in lines) == 12
    final = [l for l in lines if l["event"] == "result"]
    assert [len(r["candidates"]) for r in final] == [6, 6]

    same = [json.loads(l) for l in metagen("reselect", str(trace), "--strategy", "self_consistency",
                                           "--json").stdout.splitlines()]
    assert [s["best"] for s in same] == [r["best"]["text"] for r in results]
    assert [s["index"] for s in same] == [s["was"] for s in same]
    assert all(sum(s["votes"].values()) == 6 for s in same)

    rescored = [json.loads(l) for l in metagen("reselect", str(trace), "--strategy", "best_of_n", "--scorer",
                                               "step_checker", "--json").stdout.splitlines()]
    assert all(len(r["scores"]) == 6 and set(r["scores"]) <= {0.0, 1.0} for r in rescored)
    mbr = metagen("reselect", str(trace), "--strategy", "mbr").stdout
    assert mbr.count("prompt: ") == 2 and "mbr chose candidate" in mbr

    missing = metagen("reselect", str(trace), "--strategy", "best_of_n", check=False)
    assert missing.returncode == 2 and "pass --scorer" in missing.stderr


def test_strategy_and_parameter_overrides(tiny_dir, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[host]\nmodel = "{tiny_dir}"\n\n[generation]\nmax_new_tokens = 4\ndo_sample = true\n')
    proc = metagen("run", "--config", str(config), "--json", "--strategy", "parallel", "-p", "n=3", "x")
    result = json.loads(proc.stdout)
    assert result["strategy"] == "parallel" and len(result["candidates"]) == 3
    bad = metagen("run", "--config", str(config), "--strategy", "parallel", "-p", "m=3", "x", check=False)
    assert bad.returncode == 2 and "has no parameter 'm'" in bad.stderr
    bad = metagen("run", "--config", str(config), "-p", "n", "x", check=False)
    assert bad.returncode == 2 and "write KEY=VALUE" in bad.stderr


def test_strategy_override_keeps_the_parameters_the_new_strategy_takes(tmp_path):
    """Switching self-consistency to weighted majority keeps its n and answer pattern; switching
    to best-of-N drops the answer pattern, which best-of-N does not take."""
    config = tmp_path / "c.toml"
    config.write_text('[strategy]\nname = "self_consistency"\nn = 3\nanswer_pattern = "= (\\\\d+)"\n')
    shown = metagen("run", "--config", str(config), "--strategy", "weighted_majority", "--show-config").stdout
    strategy = json.loads(shown.split("\n", 1)[1])["strategy"]
    assert strategy == {"name": "weighted_majority", "n": 3, "answer_pattern": "= (\\d+)"}
    shown = metagen("run", "--config", str(config), "--strategy", "best_of_n", "--show-config").stdout
    assert json.loads(shown.split("\n", 1)[1])["strategy"] == {"name": "best_of_n", "n": 3}
