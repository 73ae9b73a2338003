"""Plugin overhead: the same processors through metagen's generate_kwargs vs built directly by
transformers from generate()'s own flags, on a tiny model at batch 1 and 16.

    python bench/overhead.py [--quick]
"""

from __future__ import annotations

from _common import arguments, finish, once, table

import statistics

import torch

import metagen_plugins
from metagen_plugins.testing import tiny_model, tiny_tokenizer


def main() -> None:
    args = arguments(__doc__)
    new, repeats = (32, 15) if args.quick else (64, 41)
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    config = {"processors": [{"name": "temperature", "temperature": 0.7}, {"name": "top_k", "top_k": 20},
                             {"name": "top_p", "top_p": 0.9}]}
    ours_kwargs = metagen_plugins.generate_kwargs(config, model=model, tokenizer=tok)
    rows, figures = [], {}
    for batch in (1, 16):
        inputs = tok(["the quick brown fox"] * batch, return_tensors="pt")
        common = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=None)

        def theirs():
            torch.manual_seed(0)
            with torch.no_grad():
                return model.generate(**inputs, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, **common)

        def ours():
            torch.manual_seed(0)
            with torch.no_grad():
                return model.generate(**inputs, **ours_kwargs, **common)

        # alternate single calls so any drift of the machine falls on both sides alike
        a, b = theirs(), ours()
        times_theirs, times_ours = [], []
        for _ in range(repeats):
            times_theirs.append(once(theirs))
            times_ours.append(once(ours))
        t_theirs, t_ours = statistics.median(times_theirs), statistics.median(times_ours)
        same = torch.equal(a, b)
        ratio = t_theirs / t_ours
        rows.append({"batch": batch, "transformers tok/s": batch * new / t_theirs,
                     "metagen tok/s": batch * new / t_ours, "ratio": ratio, "identical output": same})
        figures[f"ratio_batch{batch}"] = ratio
        figures[f"identical_batch{batch}"] = same
    table(rows, ["batch", "transformers tok/s", "metagen tok/s", "ratio", "identical output"])
    print("ratio = metagen throughput / transformers throughput (target >= 0.97)")
    finish("overhead", figures)


if __name__ == "__main__":
    main()
