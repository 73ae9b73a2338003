"""KV-cache memory and top-1 agreement, quantized caches vs the default, at 2,000+ tokens of
context on SmolLM2-135M-Instruct (the built-in real model).

Agreement is teacher-forced: each cache predicts the next token of the default cache's greedy
continuation, step by step, so one early difference does not count twice.

    python bench/kv_quant.py [--quick]
"""

from __future__ import annotations

from _common import arguments, finish, table

import copy
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, QuantizedCache

from metagen_plugins.models import resolve

ROOT = Path(__file__).resolve().parent.parent


def tensor_bytes(t) -> int:
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def held_bytes(value) -> int:
    """Bytes of every tensor a cache layer holds (directly, or in tuples such as fp8's (data, scale))."""
    if isinstance(value, torch.Tensor):
        return tensor_bytes(value)
    if isinstance(value, (tuple, list)):
        return sum(held_bytes(v) for v in value)
    return 0


def cache_bytes(cache) -> int:
    return sum(held_bytes(v) for layer in cache.layers for v in vars(layer).values())


def run(model, prefill, first_logits, make_cache, reference):
    """Load the prompt's KV (computed once) into a fresh cache of one kind, then teacher-force."""
    cache = make_cache()
    for index, layer in enumerate(prefill.layers):
        cache.update(layer.keys.clone(), layer.values.clone(), index)
    with torch.no_grad():
        predictions = [first_logits.argmax().item()]
        start = time.perf_counter()
        for token in reference[:-1]:
            out = model(torch.tensor([[token]]), cache=cache, use_cache=True)
            predictions.append(out.logits[0, -1].argmax().item())
        seconds = time.perf_counter() - start
    return cache, predictions, seconds / max(1, len(reference) - 1)


def main() -> None:
    args = arguments(__doc__)
    context, steps = (2048, 16) if args.quick else (2400, 48)
    path = resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    text = "\n\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    text += "\n\n" + (ROOT / "README.md").read_text()
    ids = tok(text * 4, return_tensors="pt").input_ids[:, :context]
    config = model.config
    kinds = {
        "default (DynamicCache, fp32)": lambda: DynamicCache(config=config),
        "quantized quanto int4": lambda: QuantizedCache(backend="quanto", config=config, nbits=4),
        "quantized quanto int2": lambda: QuantizedCache(backend="quanto", config=config, nbits=2),
        "quantized fp8": lambda: QuantizedCache(backend="fp8", config=config),
    }
    prefill = DynamicCache(config=config)
    with torch.no_grad():
        out = model(ids, cache=prefill, use_cache=True)
    first_logits = out.logits[0, -1]
    reference = []  # the default cache's greedy continuation
    cache = copy.deepcopy(prefill)
    with torch.no_grad():
        for _ in range(steps):
            token = out.logits[0, -1].argmax().item()
            reference.append(token)
            out = model(torch.tensor([[token]]), cache=cache, use_cache=True)
    rows, figures = [], {}
    base_bytes = None
    for name, make in kinds.items():
        cache, predictions, step_seconds = run(model, prefill, first_logits, make, reference)
        size = cache_bytes(cache)
        base_bytes = base_bytes or size
        agreement = sum(p == r for p, r in zip(predictions, reference)) / len(reference)
        rows.append({"cache": name, "KV MB": size / 2**20, "vs default": size / base_bytes,
                     "top-1 agreement": agreement, "ms/step": step_seconds * 1000})
        figures[name] = {"bytes": size, "agreement": agreement, "ms_per_step": step_seconds * 1000}
    print(f"SmolLM2-135M-Instruct; context {ids.shape[1]} tokens; {steps} teacher-forced steps")
    table(rows, ["cache", "KV MB", "vs default", "top-1 agreement", "ms/step"])
    print("KV MB counts what each cache holds after the run (quantized data, scales and the "
          "full-precision residual window); quantized caches also dequantize transiently each step.")
    finish("kv_quant", {"context": ids.shape[1], "steps": steps, **figures})


if __name__ == "__main__":
    main()
