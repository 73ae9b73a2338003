"""Plugin faults: a plugin that raises while registering, building or generating takes down
neither the other plugins nor the results already computed, and the error names the
component, its plugin and its distribution. (Load failures are test_plugins.py's; a hook raising
and duplicate names, test_registry.py's; how the runner tells a host's failure from a
component's, test_runner.py's.)

``FAULTS`` is also run by ``bench/reliability.py`` for the report in docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import metagen_plugins
from tests.plugins import plugins_dir, source

FAULTY = source("faulty")

PROMPTS = ["ab", "a long prompt that trips it", "cd"]
BASE = {"generation": {"max_new_tokens": 3, "seed": 0}}

# name -> (configuration, the component named in the failure, what the error says)
FAULTS: dict[str, tuple[dict, str, str]] = {
    "logits processor raises": ({"processors": [{"name": "explode"}]}, "logits processor 'explode'",
                                "RuntimeError: explode: input too long"),
    "logits processor returns NaN": ({"processors": [{"name": "poison", "value": "nan"}]},
                                     "logits processor 'poison'", "produced NaN scores"),
    "logits processor returns +inf": ({"processors": [{"name": "poison", "value": "inf"}]},
                                      "logits processor 'poison'", "produced +inf scores"),
    "logits processor bans every token": ({"processors": [{"name": "poison", "value": "-inf"}]},
                                          "logits processor 'poison'", "only -inf"),
    "stopping criterion raises": ({"stopping": [{"name": "halt"}]}, "stopping criterion 'halt'",
                                  "LookupError: halt: cannot decide"),
    "scorer raises": ({"strategy": {"name": "best_of_n", "n": 2}, "scorer": {"name": "grumpy"}},
                      "scorer 'grumpy'", "ZeroDivisionError: grumpy scorer"),
    "strategy raises": ({"strategy": {"name": "fragile"}}, "strategy 'fragile'", "KeyError: 'fragile strategy'"),
}


def install_faulty(install_plugin):
    install_plugin("metagen_faulty", FAULTY, dist="metagen-faulty", version="0.3")


def run_fault(name: str, model, tokenizer, prompts=PROMPTS):
    config, _, _ = FAULTS[name]
    return metagen_plugins.run({**BASE, **config}, prompts, model=model, tokenizer=tokenizer)


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_fault_fails_only_its_prompt_and_names_the_component(name, install_plugin, registry, tiny):
    install_faulty(install_plugin)
    registry()
    model, tok = tiny
    results = run_fault(name, model, tok)
    assert [r.prompt for r in results] == PROMPTS
    _, component, error = FAULTS[name]
    ok_first, lost, ok_last = results
    assert not metagen_plugins.failed(ok_first) and ok_first.best is not None
    assert not metagen_plugins.failed(ok_last) and ok_last.best is not None
    assert metagen_plugins.failed(lost) and lost.best is None
    [failure] = [f for f in lost.failures if f["kind"] == "component"]
    assert component in failure["component"] and error in failure["error"]
    assert (failure["plugin"], failure["distribution"], failure["version"]) == ("metagen_faulty", "metagen-faulty", "0.3")
    assert "metagen-faulty 0.3" in failure["message"]
    assert lost.trace[-1]["event"] == "failed"
    # the prompts that completed are exactly what a run without the failing prompt gives
    alone = run_fault(name, model, tok, [PROMPTS[0], PROMPTS[2]])
    assert [r.best.text for r in alone] == [ok_first.best.text, ok_last.best.text]


def test_a_single_prompt_run_raises_with_the_component_named(install_plugin, registry, tiny):
    install_faulty(install_plugin)
    registry()
    model, tok = tiny
    with pytest.raises(Exception) as caught:
        metagen_plugins.run({**BASE, "processors": [{"name": "poison"}]}, PROMPTS[1], model=model, tokenizer=tok)
    assert "produced NaN scores" in str(caught.value)
    assert any("logits processor 'poison' (plugin 'metagen_faulty', metagen-faulty 0.3)" in note
               for note in caught.value.__notes__)


@pytest.mark.slow  # a CLI subprocess run to completion: ~50 s
def test_cli_prints_what_completed_and_exits_non_zero(tiny_dir, tmp_path):
    plugins = plugins_dir(tmp_path / "plugins", faulty="faulty_local")
    config = tmp_path / "run.toml"
    config.write_text(f'[host]\nmodel = "{tiny_dir}"\n\n[generation]\nmax_new_tokens = 3\n\n'
                      '[[processors]]\nname = "explode"\n')
    binary = Path(sys.executable).parent / "metagen"
    proc = subprocess.run([str(binary), "--plugins-dir", str(plugins), "run", "--quiet", "--config", str(config),
                           *PROMPTS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    blocks = proc.stdout.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"prompt: {p}" for p in PROMPTS]
    assert "tokens generated" in blocks[0] and "tokens generated" in blocks[2]
    assert "FAILED: logits processor 'explode' (plugin 'faulty_local', faulty_local) raised RuntimeError" in blocks[1]
    assert "1 of 3 prompt(s) failed" in proc.stderr
    json_run = subprocess.run([str(binary), "--plugins-dir", str(plugins), "run", "--quiet", "--json", "--config",
                               str(config), *PROMPTS], capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in json_run.stdout.splitlines()]
    assert json_run.returncode == 1 and [r["best"] is None for r in rows] == [False, True, False]
