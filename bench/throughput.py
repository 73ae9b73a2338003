"""Dataset throughput: problems per second of the batched runtime against one prompt at a time,
against the best hand-written baseline (one left-padded ``model.generate`` over every prompt x n
samples), and on the vLLM host against a plain client that sends every request at once.

Rows, on the demo task's held-out problems (quick: 32, full: 200), same prompts and seeds:
- ``sequential``: today's path before the batched runtime, one prompt at a time, each request
  its own ``generate()`` call (``[host] batching = false``, ``concurrency = 1``);
- ``batched c=1``: the batched decode loop with one prompt in flight (isolates the loop itself);
- ``batched``: ``run()`` with its default concurrency (every prompt in flight);
- ``raw generate``: one left-padded ``model.generate`` over all prompts x n (no strategy).
Wall time gives the targets; ``cpu s`` (this process's CPU time, all threads) is reported beside
it because on a shared machine wall time also measures the neighbours. Then SmolLM2-135M-Instruct over examples/questions.jsonl (greedy and self-consistency@8), and
the vLLM rows when a vLLM environment exists (bench/throughput_remote.py).

    python bench/throughput.py [--quick] [--no-smollm2] [--no-vllm]
"""

from __future__ import annotations

from _common import arguments, finish, table

import json
import sys
import time
from pathlib import Path

import metagen_plugins
from metagen_plugins.demo.task import is_correct
from metagen_plugins.demo.train import held_out

MAX_NEW = 48
SAMPLED = {"processors": [{"name": "temperature", "temperature": 0.8}]}
BEAM = {"name": "step_beam_search", "beam_width": 4, "expansions": 4, "step_tokens": 16, "max_steps": 5}


def config(host: dict, *, strategy: dict | None = None, scorer: dict | None = None, sampled: bool = False,
           max_new: int = MAX_NEW) -> dict:
    out = {"host": host, "generation": {"max_new_tokens": max_new, "seed": 0}}
    if sampled:
        out.update(SAMPLED)
    if strategy:
        out["strategy"] = strategy
    if scorer:
        out["scorer"] = scorer
    return out


def measure(label: str, cfg: dict, prompts: list[str], objects: dict, *, concurrency: int | None,
            check=None) -> tuple[dict, list]:
    start, cpu = time.perf_counter(), time.process_time()
    results = metagen_plugins.run(cfg, prompts, concurrency=concurrency, **objects)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    failed = sum(metagen_plugins.failed(r) for r in results)
    row = {"workload": label, "problems/s": len(prompts) / seconds, "seconds": seconds, "cpu s": cpu,
           "tokens": sum(r.budget.tokens_generated for r in results), "failed": failed}
    if check is not None:
        row["accuracy"] = sum(bool(r.best) and check(i, r.best.text) for i, r in enumerate(results)) / len(prompts)
    print(f"  {label}: {row['problems/s']:.3g} problems/s", file=sys.stderr, flush=True)
    return row, results


def raw_generate(model, tokenizer, prompts: list[str], n: int, sampled: bool, max_new: int = MAX_NEW) -> dict:
    """One left-padded generate() over every prompt x n samples: what a hand-written script does.
    Returns its table row."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    kwargs = dict(do_sample=True, temperature=0.8, top_k=0, top_p=1.0, num_return_sequences=n) if sampled \
        else dict(do_sample=False)
    torch.manual_seed(0)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=max_new, pad_token_id=tokenizer.pad_token_id, **kwargs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"workload": f"raw generate (n={n})", "problems/s": len(prompts) / seconds, "seconds": seconds,
            "cpu s": cpu}


def texts(results) -> list:
    return [[c.text for c in r.candidates] or [r.best.text if r.best else None] for r in results]


def demo_rows(count: int) -> tuple[list[dict], dict]:
    from metagen_plugins.models import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    path = resolve("demo-arith")
    model, tokenizer = load_model(path), load_tokenizer(path)
    objects = {"model": model, "tokenizer": tokenizer}
    problems = held_out()[:count]
    prompts = [p.prompt for p in problems]
    check = lambda i, text: is_correct(prompts[i], text)  # noqa: E731
    host = {"model": "demo-arith"}
    unbatched = {**host, "batching": False}
    workloads = [
        ("greedy", dict(), 1),
        ("self_consistency@16", dict(strategy={"name": "self_consistency", "n": 16}, sampled=True), 16),
        ("step_beam_search 4x4 + step checker", dict(strategy=BEAM, scorer={"name": "step_checker"}, sampled=True), None),
    ]
    rows, figures = [], {}
    keys = {"greedy": "speedup_greedy", "self_consistency@16": "speedup_sc",
            "step_beam_search 4x4 + step checker": "speedup_beam"}
    raw_ratios = []
    for name, settings, n in workloads:
        sequential, seq_results = measure(f"{name}: sequential", config(unbatched, **settings), prompts, objects,
                                          concurrency=1, check=check)
        one, one_results = measure(f"{name}: batched c=1", config(host, **settings), prompts, objects,
                                   concurrency=1, check=check)
        batched, batched_results = measure(f"{name}: batched", config(host, **settings), prompts, objects,
                                           concurrency=None, check=check)
        rows += [sequential, one, batched]
        figures[keys[name]] = batched["problems/s"] / sequential["problems/s"]
        figures[f"cpu_{keys[name]}"] = sequential["cpu s"] / batched["cpu s"]
        figures[f"identical_{keys[name][8:]}_c1_vs_batched"] = texts(one_results) == texts(batched_results)
        if name == "greedy":
            figures["identical_greedy_sequential_vs_batched"] = texts(seq_results) == texts(batched_results)
        if n is not None:
            raw = raw_generate(model, tokenizer, prompts, n, sampled=n > 1)
            rows.append({**raw, "workload": f"{name}: {raw['workload']}"})
            raw_ratios.append(batched["problems/s"] / raw["problems/s"])
            figures[f"vs_raw_batched_n{n}"] = raw_ratios[-1]
            figures[f"cpu_vs_raw_batched_n{n}"] = raw["cpu s"] / batched["cpu s"]
    figures["vs_raw_batched"] = min(raw_ratios)
    return rows, figures


def smollm2_rows() -> tuple[list[dict], dict]:
    """SmolLM2-135M-Instruct over the 20 example questions: greedy and self-consistency@8,
    batched against one prompt at a time."""
    from metagen_plugins.evaluate import extract, normalise

    path = Path(__file__).resolve().parent.parent / "examples" / "questions.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    prompts = [item["prompt"] for item in items]
    host = {"model": "smollm2-135m-instruct"}
    from metagen_plugins.models import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    local = resolve(host["model"])
    import os

    gguf = next((f for f in os.listdir(local) if f.endswith(".gguf")), None)
    objects = {"model": load_model(local, gguf_file=gguf) if gguf else load_model(local),
               "tokenizer": load_tokenizer(local, gguf) if gguf else load_tokenizer(local)}
    rows, figures = [], {}
    for name, settings in (("greedy", dict(max_new=96)),
                           ("self_consistency@8", dict(strategy={"name": "self_consistency", "n": 8},
                                                       sampled=True, max_new=96))):
        def check(i, text, answer=[item["answer"] for item in items]):  # noqa: B006
            return normalise(extract(text)) == normalise(str(answer[i]))

        seq, _ = measure(f"smollm2 {name}: sequential", config({**host, "batching": False}, **settings), prompts,
                         objects, concurrency=1, check=lambda i, t: check(i, t))
        bat, _ = measure(f"smollm2 {name}: batched", config(host, **settings), prompts, objects, concurrency=None,
                         check=lambda i, t: check(i, t))
        rows += [seq, bat]
        figures[f"smollm2_speedup_{name.split('@')[0]}"] = bat["problems/s"] / seq["problems/s"]
    return rows, figures


def main() -> None:
    def extra(parser):
        parser.add_argument("--problems", type=int, default=None, help="held-out problems (default 200, quick 32)")
        parser.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 rows")
        parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM rows")

    args = arguments(__doc__, extra)
    count = args.problems or (32 if args.quick else 200)
    rows, figures = demo_rows(count)
    if not args.no_smollm2 and not args.quick:
        more, extra_figures = smollm2_rows()
        rows += more
        figures.update(extra_figures)
    if not args.no_vllm:
        try:
            from throughput_remote import vllm_rows
        except ImportError:
            print("vLLM rows: bench/throughput_remote.py is not here", file=sys.stderr)
        else:
            more, extra_figures = vllm_rows(args.quick)
            rows += [{**r, "workload": f"vLLM {r['workload']}: {r.get('side', '')}"} for r in more]
            figures.update(extra_figures)
    print(f"demo-arith; {count} held-out problems; max_new_tokens {MAX_NEW}; seed 0; sampled at T=0.8")
    table(rows, ["workload", "problems/s", "seconds", "cpu s", "tokens", "accuracy", "failed"])
    finish("throughput", {"problems": count, **figures})


if __name__ == "__main__":
    main()
