"""A 3-step extension chain of 8 branches (what a step-level search does): the prefix cache
vs recomputing every prefix.

    python bench/prefix_cache.py [--quick]
"""

from __future__ import annotations

from _common import arguments, finish, table

import time

import torch

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.engines.transformers.host import TransformersHost
from metagen_plugins.testing import tiny_model, tiny_tokenizer


def chain(host, prompt, branches, step_tokens, steps):
    torch.manual_seed(0)
    budget = Budget()
    generator = host.generator(budget)
    start = time.perf_counter()
    [frontier] = generator.sample([prompt], branches, max_new_tokens=step_tokens)
    for _ in range(steps - 1):
        frontier = [kids[0] for kids in generator.extend(frontier, 1, max_new_tokens=step_tokens)]
    return time.perf_counter() - start, budget, [c.token_ids for c in frontier]


def main() -> None:
    args = arguments(__doc__)
    prompt_chars, branches, step_tokens, steps = (300, 8, 8, 3) if args.quick else (800, 8, 16, 3)
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), layers=4, hidden=256, heads=4)
    prompt = ("abcdefghij klmnop qrstuv wxyz " * 40)[:prompt_chars]
    registry = metagen_plugins.get_registry()
    rows, figures = [], {}
    outputs = {}
    for label, cache_bytes in (("without prefix cache", 0), ("with prefix cache", 512 * 2**20)):
        config = {"host": {"prefix_cache_bytes": cache_bytes},
                  "processors": [{"name": "temperature", "temperature": 1.0}]}
        host = TransformersHost(metagen_plugins.validate(config, registry), registry, model=model, tokenizer=tok)
        chain(host, prompt, branches, step_tokens, steps)  # warm-up
        seconds, budget, outputs[label] = chain(host, prompt, branches, step_tokens, steps)
        rows.append({"run": label, "seconds": seconds, "prompt tokens computed": budget.prompt_tokens_computed,
                     "prompt tokens reused": budget.prompt_tokens_reused,
                     "forward passes": budget.forward_passes})
        figures[label.replace(" ", "_")] = {"seconds": seconds, "computed": budget.prompt_tokens_computed}
    print(f"prompt {len(tok(prompt).input_ids)} tokens; {branches} branches x {steps} steps of {step_tokens} tokens")
    table(rows, ["run", "seconds", "prompt tokens computed", "prompt tokens reused", "forward passes"])
    without, with_ = rows[0], rows[1]
    share = with_["prompt tokens computed"] / without["prompt tokens computed"]
    print(f"recomputed prompt tokens with cache: {share:.1%} of without (target <= 10%); "
          f"time ratio {without['seconds'] / with_['seconds']:.2f}x; "
          f"same tokens: {outputs['without prefix cache'] == outputs['with prefix cache']}")
    figures.update(recomputed_share=share, speedup=without["seconds"] / with_["seconds"],
                   same_tokens=outputs["without prefix cache"] == outputs["with prefix cache"])
    finish("prefix_cache", figures)


if __name__ == "__main__":
    main()
