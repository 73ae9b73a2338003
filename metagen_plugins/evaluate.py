"""Scoring runs against known answers, and the results file ``metagen plot`` draws.

A results file is one JSON object::

    {"format": "metagen-results/1", "task": "...",
     "rows": [{"strategy": "greedy", "prompts": 300, "accuracy": 0.31,
               "tokens": 27.3, "flops": 7.4e9, "wall_time": 0.8}, ...]}

one row per strategy; ``tokens`` (generated), ``flops`` and ``wall_time`` (seconds) are means per
prompt, ``accuracy`` is null when the prompts had no known answers. ``metagen run --json
--compare`` and ``bench/smollm2.py --results`` write it; ``metagen plot`` reads it.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any, Sequence

from metagen_hooks import Result

from metagen_hooks import answers as answer_module

FORMAT = "metagen-results/1"
DEFAULT_MODEL = "smollm2-135m-instruct"


def default_config(model: str | None = None) -> dict[str, Any]:
    """The packaged configuration of a built-in model (``metagen_plugins/defaults/NAME.toml``);
    for any other model (a local directory), SmolLM2's configuration with that model."""
    from .config import load

    name = model or DEFAULT_MODEL
    files = resources.files("metagen_plugins") / "defaults"
    source = files / f"{name}.toml"
    if not source.is_file():
        source = files / f"{DEFAULT_MODEL}.toml"
    with resources.as_file(source) as path:
        data = load(path)
    data["_source"] = f"the default configuration ({source.name})"
    if model:
        data.setdefault("host", {})["model"] = model
    return data


def greedy(config: dict[str, Any]) -> dict[str, Any]:
    """The same configuration decoding greedily: no strategy, no sampling processors, one
    candidate per prompt (the baseline of ``--compare``)."""
    data = copy.deepcopy(config)
    data.pop("strategy", None)
    data.pop("scorer", None)
    data["processors"] = [p for p in data.get("processors", []) if p.get("name") not in _SAMPLING]
    data.setdefault("generation", {})["do_sample"] = False
    return data


_SAMPLING = {"temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta", "mirostat"}


def answer_pattern(config: dict[str, Any]) -> str:
    """The pattern the configured strategy extracts answers with (GSM8K's ``#### N`` by default)."""
    return (config.get("strategy") or {}).get("answer_pattern", answer_module.DEFAULT_PATTERN)


def extract(result: Result, pattern: str) -> str | None:
    return answer_module.extract(result.best.text, pattern) if result.best else None


def votes(result: Result) -> dict[str, float] | None:
    """The vote table a voting strategy recorded in its trace (its last ``select`` event)."""
    for event in reversed(result.trace):
        if event.get("event") == "select":
            return event.get("votes")
    return None


def row(strategy: str, results: Sequence[Result], expected: Sequence[str | None] | None,
        pattern: str) -> dict[str, Any]:
    """One results-file row: accuracy over the prompts with a known answer, mean costs."""
    n = max(len(results), 1)
    spent = [r.budget.spent() for r in results]
    known = [(r, e) for r, e in zip(results, expected or []) if e is not None]
    accuracy = (sum(extract(r, pattern) == normalise(e) for r, e in known) / len(known)) if known else None
    return {"strategy": strategy, "prompts": len(results), "accuracy": accuracy,
            "correct": sum(extract(r, pattern) == normalise(e) for r, e in known) if known else None,
            "tokens": sum(s["tokens_generated"] for s in spent) / n,
            "flops": sum(s["flops"] for s in spent) / n,
            "wall_time": sum(s["wall_time"] for s in spent) / n}


def normalise(answer: Any) -> str:
    """A known answer as answer extraction would print it (``"1,000"`` -> ``"1000"``, ``19.0`` -> ``"19"``)."""
    text = str(answer).strip().replace(",", "")
    if text.endswith(".0") and text[:-2].lstrip("-").isdigit():
        text = text[:-2]
    return text


def results_file(rows: list[dict[str, Any]], **about: Any) -> dict[str, Any]:
    return {"format": FORMAT, **about, "rows": rows}
