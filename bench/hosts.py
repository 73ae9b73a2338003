"""The same strategy and configuration on the transformers host (in-process) and on the vLLM host
(a vLLM server on this machine, started here from `metagen vllm serve-args`): tokens/s and wall
time side by side, and their ratio.

Workloads, each over the same prompts and settings on both hosts:
  greedy            one sample per prompt, prompts one after another (metagen.run)
  self_consistency  n samples per prompt at temperature 0.8 (one request with n on vLLM;
                    one shared prefill on transformers)
  fan-out           one Generator.sample(prompts, n=4) call: vLLM batches the concurrent
                    requests, the transformers Generator runs the prompts in turn

Models: the demo model (1.8M parameters; per-token compute is negligible, so this measures each
host's overhead per step and per request) and, with --model smollm2-135m-instruct, a 135M one.
The server gets the same CPU (VLLM_CPU_OMP_THREADS_BIND picks its cores; vLLM runs torch with
one thread per worker here, so the transformers side uses --threads 1 by default).

    python bench/hosts.py [--quick] [--model demo-arith|smollm2-135m-instruct] [--url URL] [--eager]
"""

from __future__ import annotations

from _common import arguments, finish, start_vllm, table

import sys
import tempfile
import time
from pathlib import Path

import metagen_plugins
from metagen_hooks import Budget
from tests.fakes.vllm_server import VLLM_PYTHON  # the repository root is on sys.path through _common

QUESTIONS = ["What is the capital of France?", "Name three colors of the rainbow.",
             "Write one sentence about the sea.", "What is 12 + 7?", "Give a synonym of quick.",
             "Why is the sky blue?", "List two fruits.", "What do bees make?"]


def prompts(model: str, count: int) -> tuple[list[str], object]:
    """Prompts and an answer checker: the demo task's held-out problems, or plain questions."""
    if model == "demo-arith":
        from metagen_plugins.demo.task import is_correct
        from metagen_plugins.demo.train import held_out

        return [p.prompt for p in held_out()[:count]], is_correct
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(count)], None


def start_server(model: str, eager: bool, max_model_len: int, log: Path):
    """A vLLM server for ``model`` from serve-args (``.url``; ``.stop()`` ends it)."""
    return start_vllm({"name": "vllm", "model": model, "dtype": "float32", "gpu_memory_utilization": 0.1,
                       "max_model_len": max_model_len, "enforce_eager": eager}, log)


def measure(label: str, host_name: str, config: dict, items: list[str], check, objects: dict) -> dict:
    """Run the configured strategy on every prompt: wall time, tokens generated, accuracy."""
    start = time.perf_counter()
    results = metagen_plugins.run(config, items, **objects)
    wall = time.perf_counter() - start
    tokens = sum(r.budget.tokens_generated for r in results)
    row = {"workload": label, "host": host_name, "prompts": len(items), "tokens": tokens,
           "wall s": wall, "tok/s": tokens / wall}
    if check is not None:
        row["accuracy"] = sum(bool(r.best) and check(p, r.best.text) for p, r in zip(items, results)) / len(items)
    return row


def fan_out(host_name: str, config: dict, items: list[str], objects: dict) -> dict:
    """One Generator.sample call over all prompts (n=4 each)."""
    from metagen_plugins import hosts
    from metagen_plugins.config import validate

    registry = metagen_plugins.get_registry()
    cfg = validate(config, registry)
    host = hosts.create(cfg, registry, **objects)
    budget = Budget()
    generator = host.generator(budget)
    start = time.perf_counter()
    generator.sample(items, n=4)
    wall = time.perf_counter() - start
    if hasattr(host, "close"):
        host.close()
    return {"workload": "fan-out n=4", "host": host_name, "prompts": len(items),
            "tokens": budget.tokens_generated, "wall s": wall, "tok/s": budget.tokens_generated / wall}


def main() -> None:
    def extra(parser):
        parser.add_argument("--model", default="demo-arith", help="demo-arith or smollm2-135m-instruct")
        parser.add_argument("--url", help="use this running vLLM server (serving --model) instead of starting one")
        parser.add_argument("--eager", action="store_true", help="start the server with --enforce-eager "
                            "(no torch.compile: starts faster, decodes slower)")
        parser.add_argument("--prompts", type=int, default=None, help="prompts per workload (default 16, quick 4)")
        parser.add_argument("--n", type=int, default=None, help="self-consistency samples (default 16, quick 8)")

    args = arguments(__doc__, extra)
    count = args.prompts or (4 if args.quick else 16)
    n = args.n or (8 if args.quick else 16)
    max_new = 48 if args.model == "demo-arith" else 64
    items, check = prompts(args.model, count)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from metagen_plugins.models import resolve

    transformers_logging.disable_progress_bar()
    path = resolve(args.model)
    local = {"model": AutoModelForCausalLM.from_pretrained(path).eval(), "tokenizer": AutoTokenizer.from_pretrained(path)}
    server = None
    url = args.url
    if url is None:
        if not VLLM_PYTHON.exists():
            raise SystemExit(f"no vLLM environment at {VLLM_PYTHON}: make .venv-vllm/.installed (or pass --url)")
        log = Path(tempfile.gettempdir()) / "metagen-bench-vllm.log"
        server = start_server(args.model, args.eager, 128 if args.model == "demo-arith" else 1024, log)
        url = server.url
    hosts_config = {"transformers": {"name": "transformers", "chat_template": False},
                    "vllm": {"name": "vllm", "url": url, "model": args.model, "concurrency": 16}}
    workloads = {
        "greedy": {"generation": {"max_new_tokens": max_new}},
        f"self_consistency n={n}": {"generation": {"max_new_tokens": max_new, "seed": 0},
                                    "processors": [{"name": "temperature", "temperature": 0.8}],
                                    "strategy": {"name": "self_consistency", "n": n}},
    }
    rows, ratios = [], []
    try:
        for label, config in workloads.items():
            pair = {}
            for name, host in hosts_config.items():
                objects = local if name == "transformers" else {}
                measure(label, name, {**config, "host": host}, items[:1], check, objects)  # warm-up
                pair[name] = measure(label, name, {**config, "host": host}, items, check, objects)
                rows.append(pair[name])
                print(f"  {label} on {name}: {pair[name]['wall s']:.1f} s", file=sys.stderr, flush=True)
            ratios.append((label, pair))
        sampled = {"generation": {"max_new_tokens": max_new, "seed": 0},
                   "processors": [{"name": "temperature", "temperature": 0.8}]}
        pair = {}
        for name, host in hosts_config.items():
            pair[name] = fan_out(name, {**sampled, "host": host}, items, local if name == "transformers" else {})
            rows.append(pair[name])
        ratios.append(("fan-out n=4", pair))
    finally:
        if server is not None:
            server.stop()
    print(f"model {args.model}; {count} prompts; max_new_tokens {max_new}; transformers threads {args.threads}")
    table(rows, ["workload", "host", "prompts", "tokens", "wall s", "tok/s", "accuracy"])
    print()
    summary = [{"workload": label, "tok/s vLLM / transformers": p["vllm"]["tok/s"] / p["transformers"]["tok/s"],
                "wall transformers / vLLM": p["transformers"]["wall s"] / p["vllm"]["wall s"]}
               for label, p in ratios]
    table(summary, ["workload", "tok/s vLLM / transformers", "wall transformers / vLLM"])
    finish("hosts", {"model": args.model, "rows": rows, "ratios": summary})


if __name__ == "__main__":
    main()
