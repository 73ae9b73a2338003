"""Reproducibility: the same configuration, seed and host give identical outputs and traces,
for every strategy the registry holds (a new built-in strategy is covered without editing this
file), across two fresh processes on the transformers host with the demo model; and a prompt's
result does not depend on the prompts run before it. (test_strategies.py repeats a fixed list
of strategies twice in one process on a random model.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import metagen_plugins
# The small settings the strategy tests use; a strategy not listed there runs with its defaults
# under the budget below, so it is covered as soon as it is registered.
from test_strategies import SCORERS, STRATEGIES as SMALL

PROMPTS = ["Q: 3+4-2=? A:", "Q: 9-5+7=? A:"]


def builtin_strategies() -> list[str]:
    registry = metagen_plugins.get_registry(reload=True)
    return sorted(name for name, info in registry.components["strategies"].items()
                  if info.plugin == "metagen_plugins.builtin")


def config(name: str) -> dict:
    return {"host": {"model": "demo-arith"},
            "processors": [{"name": "temperature", "temperature": 0.8}],
            "generation": {"do_sample": True, "seed": 1234, "max_new_tokens": 40},
            "budget": {"max_tokens": 400, "max_samples": 12},
            "strategy": {"name": name, **SMALL.get(name, {})},
            "scorer": {"name": SCORERS.get(name, "step_checker")}}


def without_wall_time(value, approx: bool = False, floats: bool = False):
    """A result or trace with its wall-clock fields (the only ones allowed to differ) removed;
    with ``approx``, its log-probabilities compare within 1e-4. Prompts run at the same time
    share forward passes, and the batch a row shares changes float rounding (by about 1e-6
    here); the tokens, texts, scores and budgets must still be identical. ``floats``: every
    float compares within 1e-4, for a strategy whose scores are the model's own confidences
    (deepconf: computed from log-probabilities, so they carry the same rounding)."""
    if isinstance(value, dict):
        return {k: pytest.approx(v, abs=1e-4) if approx and k == "logprobs" and isinstance(v, list)
                else without_wall_time(v, approx, floats) for k, v in value.items() if k != "wall_time"}
    if isinstance(value, list):
        return [without_wall_time(v, approx, floats) for v in value]
    if floats and isinstance(value, float):
        return pytest.approx(value, abs=1e-4)
    return value


SCRIPT = """
import json, sys
import metagen_plugins
from test_reproducibility import builtin_strategies, config, PROMPTS
out = {}
for name in builtin_strategies():
    results = metagen_plugins.run(config(name), PROMPTS)
    out[name] = [r.to_dict() for r in results]
json.dump(out, sys.stdout)
"""


# The fresh processes compute with this process's thread settings: float sums differ with the
# number of threads, and the in-process comparison below must see the same numbers.
THREADS = {k: v for k, v in os.environ.items() if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}


@pytest.fixture(scope="module")
def two_processes():
    """Every built-in strategy on both prompts, in two fresh processes."""
    from pathlib import Path

    here = str(Path(__file__).parent)
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=1800,
                              cwd=here, env={"PYTHONPATH": here, "PATH": "/usr/bin:/bin", **THREADS})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout))
    return runs


@pytest.mark.slow  # two fresh processes run every built-in strategy: ~2 minutes
@pytest.mark.parametrize("name", builtin_strategies())
def test_same_configuration_and_seed_give_identical_outputs_and_traces(name, two_processes):
    first, second = without_wall_time(two_processes[0][name], approx=True), without_wall_time(two_processes[1][name])
    assert [r["best"] for r in first] == [r["best"] for r in second]
    assert [r["candidates"] for r in first] == [r["candidates"] for r in second]
    assert [r["trace"] for r in first] == [r["trace"] for r in second]
    assert first == second  # everything else too: scores, budgets, failures
    assert all(r["failures"] == [] and r["best"] is not None for r in second), name
    assert second[0]["best"]["text"] or second[0]["candidates"]  # something was generated


@pytest.fixture(scope="module")
def demo():
    from metagen_plugins.models import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    path = resolve("demo-arith")
    return load_model(path), load_tokenizer(path)


@pytest.mark.slow  # shares the two fresh processes' runs
@pytest.mark.parametrize("name", builtin_strategies())
def test_a_prompts_result_does_not_depend_on_the_prompts_before_it(name, two_processes, demo):
    model, tokenizer = demo  # the same checkpoint, loaded once in this process
    alone = without_wall_time(metagen_plugins.run(config(name), PROMPTS[1], model=model,
                                                  tokenizer=tokenizer).to_dict())
    assert without_wall_time(two_processes[0][name][1], approx=True, floats=name == "deepconf") == alone
