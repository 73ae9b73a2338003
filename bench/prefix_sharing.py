"""N samples of one long prompt: metagen's Generator (one prefill, KV expanded to N rows) vs
generate(num_return_sequences=N) (the prompt prefilled N times).

    python bench/prefix_sharing.py [--quick]
"""

from __future__ import annotations

from _common import arguments, finish, table, timed

import torch

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.engines.transformers.host import TransformersHost
from metagen_plugins.testing import tiny_model, tiny_tokenizer


def main() -> None:
    args = arguments(__doc__)
    prompt_tokens, n, new = (400, 8, 16) if args.quick else (1000, 16, 32)
    repeats = 2 if args.quick else 3
    tok = tiny_tokenizer()
    model = tiny_model(len(tok), layers=4, hidden=256, heads=4)
    params = sum(p.numel() for p in model.parameters())
    prompt = ("abcdefghij klmnop qrstuv wxyz " * 100)[: prompt_tokens - 1]
    ids = tok(prompt, return_tensors="pt").input_ids
    config = {"processors": [{"name": "temperature", "temperature": 1.0}], "generation": {"max_new_tokens": new}}
    registry = metagen_plugins.get_registry()
    host = TransformersHost(metagen_plugins.validate(config, registry), registry, model=model, tokenizer=tok)
    budgets = []

    def ours():
        budget = Budget()
        budgets.append(budget)
        return host.generator(budget).sample([prompt], n)

    def theirs():
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                                  num_return_sequences=n, max_new_tokens=new, min_new_tokens=new,
                                  pad_token_id=0, eos_token_id=None)

    t_theirs, _ = timed(theirs, repeats)
    t_ours, _ = timed(ours, repeats)
    spent = budgets[-1]
    rows = [
        {"method": "generate(num_return_sequences)", "seconds": t_theirs,
         "prompt_tokens_computed": ids.shape[1] * n},
        {"method": "metagen Generator.sample", "seconds": t_ours,
         "prompt_tokens_computed": spent.prompt_tokens_computed},
    ]
    print(f"model {params / 1e6:.1f}M params; prompt {ids.shape[1]} tokens; N={n}; {new} new tokens")
    table(rows, ["method", "seconds", "prompt_tokens_computed"])
    speedup = t_theirs / t_ours
    print(f"speedup {speedup:.2f}x (target >= 4x)")
    finish("prefix_sharing", {"prompt_tokens": ids.shape[1], "n": n, "new_tokens": new,
                              "seconds_generate": t_theirs, "seconds_metagen": t_ours, "speedup": speedup,
                              "prompt_tokens_computed_generate": ids.shape[1] * n,
                              "prompt_tokens_computed_metagen": spent.prompt_tokens_computed})


if __name__ == "__main__":
    main()
