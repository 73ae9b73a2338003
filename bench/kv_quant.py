"""Quantized KV inside the batched engine (``[host] kv_cache = "int8"`` / ``"int4"``) against the
same engine unquantized, at a long context: SmolLM2-135M-Instruct (float32), G prompts of P
tokens (slices of this repository's docs), n greedy rows each, all in one batch.

- ``kv_memory_ratio``: the KV the engine holds at its peak (its requests' prefixes and the rows'
  own positions, each storage counted once; ``Engine.kv_bytes``), quantized over unquantized.
  The unquantized layout also stacks a copy of the prefixes for its kernel; that copy is
  reported (``layout MB``) but left out of the ratio;
- ``kv_speed_ratio``: the median decode step of the unquantized engine over the quantized one
  (the engine's ``_step``: forward pass, choice, bookkeeping; prefill left out), the modes
  alternating, so >= 1 means the quantized engine decodes faster;
- top-1 agreement, teacher-forced: every row is fed the unquantized engine's greedy tokens and
  its own argmax is compared with them at each step, and the log-probabilities of those tokens
  (max and mean absolute difference);
- task accuracy: the demo arithmetic task's 120 held-out problems, greedy, on demo-arith,
  unquantized and quantized (default settings, and ``residual = 0, group = 8`` so that the
  short prompts are quantized too).

    python bench/kv_quant.py [--quick]
"""

from __future__ import annotations

from _common import arguments, finish, table

import statistics
import time
from pathlib import Path

import torch

import metagen_plugins
from metagen_plugins.engines.transformers.engine import Request
from metagen_plugins.engines.transformers.host import TransformersHost
from metagen_plugins.models import load_model, load_tokenizer, resolve

ROOT = Path(__file__).resolve().parent.parent
MODES = {"unquantized": None, "int8": "int8", "int4": "int4"}


def host(model, tok, kv_cache) -> TransformersHost:
    registry = metagen_plugins.get_registry()
    settings = {"prefix_cache_bytes": 8 * 2**30, "max_batch_tokens": 2**20}
    if kv_cache is not None:
        settings["kv_cache"] = kv_cache
    return TransformersHost(metagen_plugins.validate({"host": settings}, registry), registry, model=model,
                            tokenizer=tok)


def decode(h: TransformersHost, prompts: list[list[int]], n: int, steps: int, processors=None) -> list:
    """Every prompt's n greedy rows submitted at once; each request's rows."""
    requests = [Request(tokens=p, n=n, max_new_tokens=steps, processors=list(processors(i)) if processors else [])
                for i, p in enumerate(prompts)]
    futures = [h.engine.submit(r) for r in requests]
    return [f.result()[0] for f in futures]


class Forced:
    """Teacher forcing: records the model's argmax, then makes ``reference`` the only choice."""

    def __init__(self, reference: list[int], start: int) -> None:
        self.reference, self.start, self.argmax = reference, start, []

    def __call__(self, ids, scores):
        step = ids.shape[1] - self.start
        self.argmax.append(scores.argmax(-1).tolist())
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.reference[min(step, len(self.reference) - 1)]] = 0.0
        return forced


def step_times(h: TransformersHost, times: list[float]) -> None:
    engine = h.engine
    step = engine._step

    def timed() -> None:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)

    engine._step = timed


def long_context(args) -> tuple[list[dict], dict]:
    groups, length, n, steps, repeats = (2, 2048, 4, 8, 2) if args.quick else (4, 2048, 8, 32, 3)
    path = resolve("smollm2-135m-instruct")
    tok, model = load_tokenizer(path), load_model(path)
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    ids = tok(text + "\n\n" + (ROOT / "README.md").read_text()).input_ids
    prompts = [ids[g * length:(g + 1) * length] for g in range(groups)]
    assert all(len(p) == length for p in prompts), "not enough text for the prompts"
    hosts = {name: host(model, tok, kv) for name, kv in MODES.items()}
    times: dict[str, list[float]] = {name: [] for name in MODES}
    for name, h in hosts.items():
        decode(h, prompts, 1, 1)  # prefill once: the prefix cache holds every prompt's KV (quantized or not)
        step_times(h, times[name])
    reference = None
    for _ in range(repeats):  # alternate the modes; the machine is shared
        for name, h in hosts.items():
            out = decode(h, prompts, n, steps)
            reference = reference if name != "unquantized" else [rows[0][0] for rows in out]
    medians = {name: statistics.median(t) for name, t in times.items()}
    timed_steps = {name: len(t) for name, t in times.items()}
    figures, rows = {}, []
    base_logprobs = None
    for name, h in hosts.items():
        h.engine.measure, h.engine.peak_kv_bytes = True, 0
        forced = [Forced(reference[g], len(prompts[g])) for g in range(groups)]
        out = decode(h, prompts, n, steps, processors=lambda g: [forced[g]])
        h.engine.measure = False
        held = h.engine.peak_kv_bytes
        layout = h.engine.peak_layout_bytes
        agree = [a == reference[g][s] for g in range(groups) for s, step in enumerate(forced[g].argmax)
                 for a in step if s < len(reference[g])]
        logprobs = [lp for rows_ in out for _, lps in rows_ for lp in lps]
        if base_logprobs is None:
            base_logprobs = logprobs
        diffs = [abs(a - b) for a, b in zip(logprobs, base_logprobs)]
        step = medians[name]
        figures[name] = {"kv_bytes": held, "layout_bytes": layout, "step_s": step,
                         "top1_agreement": sum(agree) / len(agree), "max_abs_logprob_diff": max(diffs),
                         "mean_abs_logprob_diff": sum(diffs) / len(diffs)}
        h.close()
    base = figures["unquantized"]
    for name, f in figures.items():
        f["memory_ratio"] = f["kv_bytes"] / base["kv_bytes"]
        f["speed_ratio"] = base["step_s"] / f["step_s"]
        rows.append({"KV": name, "KV MB": f["kv_bytes"] / 2**20, "layout MB": f["layout_bytes"] / 2**20,
                     "memory ratio": f["memory_ratio"], "speed ratio": f["speed_ratio"],
                     "top-1 agreement": f["top1_agreement"], "max |dlogp|": f["max_abs_logprob_diff"],
                     "mean |dlogp|": f["mean_abs_logprob_diff"]})
    setup = {"prompts": groups, "prompt_tokens": length, "rows_per_prompt": n, "steps": steps,
             "repeats": repeats, "steps_timed": timed_steps}
    return rows, {"setup": setup, **figures}


def task_accuracy(args) -> tuple[list[dict], dict]:
    from metagen_plugins.demo.task import is_correct
    from metagen_plugins.demo.train import held_out

    problems = held_out()[-(30 if args.quick else 120):]
    config = {"generation": {"max_new_tokens": 48}, "host": {"model": "demo-arith"}}
    kinds = {"unquantized": None, "int8": "int8", "int4": "int4",
             "int8 residual 0, group 8": {"bits": 8, "residual": 0, "group": 8},
             "int4 residual 0, group 8": {"bits": 4, "residual": 0, "group": 8}}
    rows, figures, base = [], {}, None
    for name, kv in kinds.items():
        cfg = {**config, "host": {**config["host"], **({"kv_cache": kv} if kv else {})}}
        results = metagen_plugins.run(cfg, [p.prompt for p in problems])
        texts = [r.candidates[0].text for r in results]
        correct = [is_correct(p.prompt, t) for p, t in zip(problems, texts)]
        base = base or texts
        same = sum(a == b for a, b in zip(texts, base)) / len(texts)
        figures[name] = {"accuracy": sum(correct) / len(correct), "same_text_as_unquantized": same}
        rows.append({"KV": name, "problems": len(problems), "accuracy": sum(correct) / len(correct),
                     "same text": same})
    return rows, figures


def main() -> None:
    args = arguments(__doc__)
    rows, long = long_context(args)
    setup = long["setup"]
    print(f"SmolLM2-135M-Instruct float32; {setup['prompts']} prompts x {setup['prompt_tokens']} tokens, "
          f"{setup['rows_per_prompt']} greedy rows each, {setup['steps']} steps; machine shared: ratios only")
    table(rows, ["KV", "KV MB", "layout MB", "memory ratio", "speed ratio", "top-1 agreement", "max |dlogp|",
                 "mean |dlogp|"])
    task_rows, task = task_accuracy(args)
    print("demo arithmetic task (held-out problems, greedy, demo-arith)")
    table(task_rows, ["KV", "problems", "accuracy", "same text"])
    figures = {"kv_memory_ratio": {k: long[k]["memory_ratio"] for k in ("int8", "int4")},
               "kv_speed_ratio": {k: long[k]["speed_ratio"] for k in ("int8", "int4")},
               "top1_agreement": {k: long[k]["top1_agreement"] for k in ("int8", "int4")},
               "task_accuracy": {k: v["accuracy"] for k, v in task.items()}}
    finish("kv_quant", {**figures, "long_context": long, "task": task})


if __name__ == "__main__":
    main()
