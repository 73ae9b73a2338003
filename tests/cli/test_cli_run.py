"""`metagen run` as a user runs it: the packaged default configuration, answers, votes and
budgets, --compare with known answers, --json, and one-paragraph errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_plugins import plugins_dir


BIN = Path(sys.executable).parent / "metagen"


def metagen(*args, check=True, cwd=None):
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "METAGEN_DISABLE_PLUGINS": ""})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_show_config_is_the_packaged_smollm2_default():
    out = metagen("run", "--show-config").stdout
    assert 'model = "smollm2-135m-instruct"' in out
    assert 'name = "calculator_vote"' in out and "answer_pattern" in out
    assert 'model = "demo-arith"' in metagen("run", "--model", "demo-arith", "--show-config").stdout


def test_default_configuration_without_config(tiny_dir):
    """No --config: the packaged calculator_vote configuration, on the model given."""
    proc = metagen("run", "--model", str(tiny_dir), "-p", "n=3", "--answers", "19", "What is 12 + 7?")
    out = proc.stdout
    assert out.startswith("prompt: What is 12 + 7?\n")
    assert "answer: " in out and "expected 19" in out
    assert "budget: calculator_vote; " in out and "3 samples" in out and "GFLOPs" in out


def test_json_carries_answer_votes_and_correctness(tiny_dir):
    proc = metagen("run", "--model", str(tiny_dir), "-p", "n=4", "--json", "--answers", "19,5",
                   "What is 12 + 7?", "What is 9 - 4?")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in lines] == ["What is 12 + 7?", "What is 9 - 4?"]
    assert [r["expected"] for r in lines] == ["19", "5"]
    for r in lines:
        assert r["strategy"] == "calculator_vote" and len(r["candidates"]) == 4
        assert r["correct"] == (r["answer"] == r["expected"])
        assert sum(r["votes"].values()) <= 4 and r["budget"]["samples"] == 4


def test_compare_with_a_prompts_file_prints_both_accuracies_and_costs(tiny_dir, tmp_path):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text('{"prompt": "What is 1 + 1?", "answer": 2}\n{"prompt": "What is 3 + 4?", "answer": "7"}\n')
    out = metagen("run", "--model", str(tiny_dir), "-p", "n=2", "--compare", "--prompts", str(prompts)).stdout
    assert out.count("prompt: ") == 2 and out.count("  greedy ") == 2
    table = out[out.index("strategy  "):].splitlines()
    assert table[0].split() == ["strategy", "accuracy", "tokens/prompt", "GFLOPs/prompt", "latency", "s"]
    assert table[1].startswith("greedy ") and "/2 (" in table[1]
    assert table[2].startswith("calculator_vote@2 ") and "/2 (" in table[2]


def test_compare_validates_each_configuration_once_and_loads_the_model_once(tiny_dir, monkeypatch, capsys):
    """--compare runs two configurations: each is validated once (the runner takes the
    validated Config), the model is loaded once, and there is one host per run, no throwaway
    host built only to load the model."""
    from metagen_plugins import cli, config, runner
    from metagen_plugins.engines.transformers import host as host_module

    calls = {"validate": 0, "load_model": 0, "hosts": 0}

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(config, "validate", counting("validate", config.validate))
    monkeypatch.setattr(runner, "validate", counting("validate", runner.validate))
    monkeypatch.setattr(host_module, "load_model", counting("load_model", host_module.load_model))
    monkeypatch.setattr(host_module.TransformersHost, "__init__",
                        counting("hosts", host_module.TransformersHost.__init__))
    assert cli.main(["run", "--model", str(tiny_dir), "-p", "n=2", "--compare", "--quiet",
                     "--answers", "2", "What is 1 + 1?"]) == 0
    assert "calculator_vote@2" in capsys.readouterr().out
    assert calls == {"validate": 2, "load_model": 1, "hosts": 2}


@pytest.mark.slow  # three strategies x prompts in a subprocess: ~1 minute
def test_compare_json_is_a_results_file_that_plots(tiny_dir, tmp_path):
    proc = metagen("run", "--model", str(tiny_dir), "-p", "n=2", "--compare", "--json", "--answers", "2,7",
                   "What is 1 + 1?", "What is 3 + 4?")
    results = json.loads(proc.stdout)
    assert results["format"] == "metagen-results/1"
    rows = {r["strategy"]: r for r in results["rows"]}
    assert set(rows) == {"greedy", "calculator_vote@2"}
    assert all(0 <= r["accuracy"] <= 1 and r["flops"] > 0 and r["tokens"] > 0 for r in rows.values())
    assert rows["calculator_vote@2"]["flops"] > rows["greedy"]["flops"]
    assert [p["expected"] for p in results["prompts"]] == ["2", "7"]
    path = tmp_path / "results.json"
    path.write_text(proc.stdout)
    out = tmp_path / "plot.svg"
    assert "wrote" in metagen("plot", str(path), "-o", str(out)).stdout
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))


def test_compare_without_answers_shows_answers_side_by_side(tiny_dir):
    out = metagen("run", "--model", str(tiny_dir), "-p", "n=2", "--compare", "--quiet", "hello").stdout
    assert "  greedy " in out and "  calculator_vote@2 " in out
    assert "no known answers" in out


def test_trace_of_a_compare_run_plots(tiny_dir, tmp_path):
    trace = tmp_path / "run.jsonl"
    metagen("run", "--model", str(tiny_dir), "-p", "n=2", "--compare", "--quiet", "--trace", str(trace),
            "--answers", "2", "What is 1 + 1?")
    runs = [json.loads(l) for l in trace.read_text().splitlines() if '"event": "run"' in l]
    assert [r["strategy"] for r in runs] == ["generate", "calculator_vote"]
    assert all(r["answer"] == "2" for r in runs) and "strategy" not in runs[0]["config"]
    png = tmp_path / "trace.png"
    metagen("plot", str(trace), "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- errors: one paragraph naming what failed and what to do; a traceback only with --debug ---

def _error(proc, code=2):
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    return line


def test_missing_model_directory(tmp_path):
    line = _error(metagen("run", "--model", str(tmp_path / "nowhere"), "x", check=False))
    assert "nowhere" in line and "neither a local directory nor a built-in model" in line
    assert "smollm2-135m-instruct" in line  # what to use instead


def test_model_directory_without_weights(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((Path(tiny_dir) / "config.json").read_text())
    line = _error(metagen("run", "--model", str(broken), "x", check=False))
    assert str(broken) in line and "could not load" in line


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "missing.toml", "No such file or directory"),
    (lambda d: d, "Is a directory"),
    (lambda d: (d / "latin1.toml").write_bytes(b"[host]\nmodel = \"caf\xe9\"\n") and d / "latin1.toml", "not UTF-8"),
])
def test_unreadable_config(tmp_path, make, expected):
    path = make(tmp_path)
    line = _error(metagen("run", "--config", str(path), "x", check=False))
    assert str(path) in line and expected in line
    assert "leave out --config" in line


def test_plugin_raising_inside_generation(tiny_dir, tmp_path):
    plugins = plugins_dir(tmp_path / "plugins", "exploding")
    config = tmp_path / "c.toml"
    config.write_text(f'[host]\nmodel = "{tiny_dir}"\n\n[generation]\nmax_new_tokens = 4\n\n'
                      '[[processors]]\nname = "boom"\n')
    args = ["--plugins-dir", str(plugins), "run", "--config", str(config), "a", "b"]
    proc = metagen(*args, check=False)
    line = _error(proc, code=1)
    assert "2 of 2 prompt(s) failed" in line and "boom" in line and "RuntimeError" in line
    assert "METAGEN_DISABLE_PLUGINS=exploding" in line and "--debug" in line
    assert proc.stdout.count("FAILED: ") == 2
    debug = metagen("--debug", *args, check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "boom at step" in debug.stderr


def test_prompts_file_and_answers_errors(tmp_path):
    line = _error(metagen("run", "--answers", "1,2", "only one", check=False))
    assert "--answers has 2 answer(s) for 1 PROMPT(s)" in line
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt"}\n')
    assert "line 2 has no \"prompt\"" in _error(metagen("run", "--prompts", str(bad), check=False))
    assert "no prompts" in _error(metagen("run", check=False))


@pytest.mark.slow
def test_the_default_model_answers_an_arithmetic_question():
    """The README's first command on a fresh machine: SmolLM2 is fetched from the package index
    and converted on first use, then self-consistency runs on it."""
    out = metagen("run", "-p", "n=2", "--quiet", "--answers", "19",
                  "What is 12 + 7? Answer with just the number.").stdout
    assert "budget: calculator_vote; " in out and "2 samples" in out and "expected 19" in out


def test_a_run_prints_no_warning_from_metagens_own_calls():
    """No FutureWarning/DeprecationWarning on the user's terminal: every warning becomes an error
    in the run (transformers' deprecated `past_key_values` is not used; `cache=` is)."""
    proc = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning:metagen_plugins",
                           "-m", "metagen_plugins.cli", "run", "--model", "demo-arith", "--quiet",
                           "--concurrency", "2", "Q: 3+4-2=? A:", "Q: 9-5+7=? A:"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "METAGEN_DISABLE_PLUGINS": ""})
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    assert proc.stdout.count("prompt: ") == 2
