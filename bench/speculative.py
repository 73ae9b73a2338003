"""Speculative decoding (greedy): a draft model and prompt lookup vs plain decoding, on the demo
pair (demo-arith with its trained draft) and on SmolLM2-135M-Instruct. Outputs must be
identical; reported are tokens/s ratios, tokens per target forward pass and draft acceptance.

SmolLM2 has no smaller sibling here, so its draft is SmolLM2 truncated to its first 10 layers
(same embeddings, final norm and head). Prompt lookup proposes continuations copied from the
prompt, which pays off when the output quotes the input.

    python bench/speculative.py [--quick]
"""

from __future__ import annotations

from _common import arguments, finish, table

import copy
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import metagen_plugins
from metagen_plugins.models import resolve

PASSAGE = ("The committee met on Tuesday to review the budget for the new library. After a long "
           "discussion, the members agreed to fund the reading room, the children's section and the "
           "archive, but postponed the decision on the rooftop garden until the spring meeting.")
PROMPTS = [
    f"Repeat this text exactly:\n{PASSAGE}",
    f"Copy the following paragraph word for word:\n{PASSAGE}",
    "List the days of the week, one per line.",
    "Write the numbers from one to twenty in words, separated by commas.",
]


def truncated(model, layers: int, path: str):
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:layers]
    draft.config.num_hidden_layers = layers
    draft.save_pretrained(path)
    return path


class Counter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self.count)

    def count(self, *_):
        self.calls += 1


def measure(model, tok, encoded, configs) -> list[dict]:
    """Greedy generation of every prompt under each configuration: tokens/s, tokens per target
    forward pass and (with a draft model) the share of drafted tokens accepted."""
    rows, outputs = [], {}
    for name, config in configs.items():
        kwargs = metagen_plugins.generate_kwargs(config, model=model, tokenizer=tok)
        target = Counter(model)
        draft = Counter(kwargs["assistant_model"]) if "assistant_model" in kwargs else None
        tokens, seconds, texts = 0, 0.0, []
        for inputs in encoded:
            with torch.no_grad():
                start = time.perf_counter()
                out = model.generate(**inputs, **kwargs, pad_token_id=tok.eos_token_id)
                seconds += time.perf_counter() - start
            generated = out[0, inputs["input_ids"].shape[1]:]
            tokens += generated.shape[0]
            texts.append(generated.tolist())
        target.handle.remove()
        outputs[name] = texts
        row = {"method": name, "tokens": tokens, "tok/s": tokens / seconds,
               "tokens per target pass": tokens / target.calls}
        if draft is not None:
            draft.handle.remove()
            # each target pass yields one token of its own; the rest were accepted draft tokens
            row["draft acceptance"] = (tokens - target.calls) / max(1, draft.calls)
        rows.append(row)
    base = rows[0]["tok/s"]
    for row in rows:
        row["speedup"] = row["tok/s"] / base
        row["identical"] = outputs[row["method"]] == outputs[rows[0]["method"]]
    return rows


def main() -> None:
    args = arguments(__doc__)
    import tempfile

    from metagen_plugins.demo.train import held_out

    columns = ["method", "tokens", "tok/s", "speedup", "tokens per target pass", "draft acceptance", "identical"]
    figures = {}

    # 1. The project's demo pair: a trained draft that shares the task with its target.
    path = resolve("demo-arith")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    problems = held_out()[: 10 if args.quick else 40]
    encoded = [tok(p.prompt, return_tensors="pt") for p in problems]
    rows = measure(model, tok, encoded, {
        "plain": {"generation": {"max_new_tokens": 48}},
        "draft model demo-arith-draft": {"host": {"draft_model": "demo-arith-draft"},
                                         "generation": {"max_new_tokens": 48}},
        "prompt lookup (3 tokens)": {"host": {"prompt_lookup_num_tokens": 3}, "generation": {"max_new_tokens": 48}},
    })
    print(f"demo-arith (1.8M) with demo-arith-draft (0.2M), greedy, {len(problems)} held-out problems")
    table(rows, columns)
    figures["demo-arith"] = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}

    # 2. SmolLM2-135M-Instruct: a real pretrained model, memory-bound on this CPU.
    new = 32 if args.quick else 96
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    path = resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    draft_dir = truncated(model, 10, tempfile.mkdtemp(prefix="smollm2-draft10-"))
    encoded = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True) for p in prompts]
    rows2 = measure(model, tok, encoded, {
        "plain": {"generation": {"max_new_tokens": new}},
        "draft model (10/30 layers)": {"host": {"draft_model": draft_dir}, "generation": {"max_new_tokens": new}},
        "prompt lookup (3 tokens)": {"host": {"prompt_lookup_num_tokens": 3}, "generation": {"max_new_tokens": new}},
    })
    print(f"\nSmolLM2-135M-Instruct, greedy, {len(prompts)} prompts x up to {new} tokens")
    table(rows2, columns)
    figures["smollm2-135m-instruct"] = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows2}
    assert all(r["identical"] for r in rows + rows2), "speculative decoding changed a greedy output"
    finish("speculative", figures)


if __name__ == "__main__":
    main()
