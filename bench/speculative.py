"""Speculative decoding, greedy, on a real pair: Qwen2.5-Coder-1.5B-Instruct (the target, built-in
``qwen2.5-coder-1.5b-instruct``) drafted by Qwen2.5-Coder-0.5B-Instruct, and prompt lookup, on
small Python functions to write (bench/qwen_code_tasks.json: each prompt shows the function's
name and two tests, which the answer tends to quote).

1. **host**: through the transformers host's public settings only (``metagen_plugins.run``), so
   it measures whatever implementation the host has: (a) plain decoding, (b) ``[host]
   draft_model`` (the 0.5B), (c) ``[host] prompt_lookup_num_tokens``, at batch 1, 4 and 16 (that
   many prompts in flight: ``concurrency``; batch 1 runs the first prompts one at a time). Per
   row: tokens/s and its ratio to (a) at the same batch (``spec_speedup_bB``,
   ``lookup_speedup_bB``: wall time, whole runs); the same from the process's CPU time
   (``spec_cpu_speedup_bB``: with one torch thread, far less sensitive to a shared machine's
   load); the decode phase alone (``spec_decode_cpu_speedup_bB``: CPU time beyond a plain run
   with ``max_new_tokens = 1`` at the same batch, the "prefill + 1 token" row: the prompts are
   ~150 tokens, so at batch 16 the prefill is much of a short run); tokens per target row-pass
   (generated tokens over the rows of every forward pass of the target, prefill included: just
   under 1 for plain decoding); the draft's acceptance ((tokens - target row-passes) / draft
   row-passes: the share of drafted tokens kept, when the draft's passes can be counted); and
   whether every greedy output is token for token (a)'s (``identical_spec_bB``,
   ``identical_lookup_bB``; "common prefix": the share of (a)'s tokens reproduced before the
   first difference), and plain decoding batched vs one at a time (``identical_plain_bB_vs_b1``).
2. **reference**: transformers' own assisted generation, ``model.generate()`` with
   ``assistant_model=`` and with ``prompt_lookup_num_tokens=``, one prompt at a time on the
   batch-1 prompts: what this hardware allows (transformers' defaults: up to 20 drafted tokens
   a round, drafting stops when the draft's confidence falls under its threshold).
3. **cost**: one forward pass of each model over B rows x q new tokens at a 256-token context,
   against the target's pass of one token per row: the price of verifying q - 1 drafted tokens
   per row, and of drafting. Medians of --repeats passes.

``--small`` adds the earlier rows (model.generate directly): the demo pair (demo-arith drafted by
demo-arith-draft) and SmolLM2-135M-Instruct drafted by its own first 10 layers.

Both models run in ``--dtype`` (default bfloat16: on this CPU, with AVX512-BF16, a pass of the
1.5B over 8 tokens costs 1.2x one token in bfloat16, and 2.5x in float32 (the part
"cost" shows it). The host loads a draft in the model's dtype. In bfloat16 a pass over k tokens rounds differently
from k passes over one, so a near-tie between two tokens can flip and a greedy output differ
from plain decoding's; --dtype float32 is the check of exact identity. Torch runs one thread (``--threads``). Every figure
is a ratio within one run; on a shared machine the wall times include the neighbours' load.
Run time is dominated by the batch-16 rows (16 prompts of ~150 tokens); the host speculates
inside its batched engine, and with ``speculative_rows = "auto"`` (the default) it chooses
speculative or plain steps per number of rows in flight by their measured speed.

    python bench/speculative.py [--quick] [--parts host,reference,cost] [--batches 1,4,16]
                                [--dtype bfloat16|float32] [--lookup 4] [--max-new-tokens 64] [--small]
"""

from __future__ import annotations

from _common import arguments, finish, table

import copy
import statistics
import sys
import tempfile
import time

import torch

import metagen_plugins
from metagen_plugins.models import load_model, load_model_cached, load_tokenizer, resolve
from qwen_tasks import code_tasks

TARGET, DRAFT = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"


class Passes:
    """Counts a model's forward passes and the rows they carried (a pass over B rows counts B)."""

    def __init__(self, model) -> None:
        self.calls = self.rows = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        self.calls += 1
        self.rows += ids.shape[0] if ids is not None else 1

    def close(self) -> None:
        self.handle.remove()


# -- 1. through the host -----------------------------------------------------------------------


def host_row(method: str, settings: dict, prompts: list[str], batch: int, objects: dict, draft,
             max_new: int) -> tuple[dict, list[list[int]]]:
    """One run of ``prompts`` with ``batch`` in flight: its table row and each prompt's tokens."""
    config = {"host": settings, "generation": {"max_new_tokens": max_new}}
    target, drafted = Passes(objects["model"]), Passes(draft)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        results = metagen_plugins.run(config, prompts, concurrency=batch, **objects)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        target.close()
        drafted.close()
    failed = [r for r in results if metagen_plugins.failed(r)]
    if failed:
        raise SystemExit(f"{method} at batch {batch} failed on {len(failed)} prompts: {failed[0].failures[0]}")
    tokens = sum(r.budget.tokens_generated for r in results)
    row = {"batch": batch, "method": method, "prompts": len(prompts), "tokens": tokens, "seconds": seconds,
           "cpu s": cpu, "tok/s": tokens / seconds, "tokens/row-pass": tokens / max(1, target.rows),
           "acceptance": (tokens - target.rows) / drafted.rows if drafted.rows else None}
    print(f"  batch {batch} {method}: {tokens} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
    return row, [list(r.best.token_ids) for r in results]


def host_rows(objects: dict, draft, draft_setting: str, tasks: list[str], batches: list[int], single: int,
              max_new: int, lookup: int) -> tuple[list[dict], dict, list[list[int]]]:
    """(a), (b) and (c) at each batch size; the figures; batch 1's plain tokens."""
    methods = {"plain": {}, f"draft {DRAFT}": {"draft_model": draft_setting},
               f"prompt lookup ({lookup})": {"prompt_lookup_num_tokens": lookup}}
    for settings in methods.values():  # first calls (the draft's loading, the engine's start) untimed
        metagen_plugins.run({"host": settings, "generation": {"max_new_tokens": 4}}, tasks[:1], **objects)
    rows, figures, plain_b1 = [], {}, []
    for batch in batches:
        prompts = tasks[:single] if batch == 1 else tasks[:batch]
        prefill, _ = host_row("prefill + 1 token", {}, prompts, batch, objects, draft, 1)
        rows.append(prefill)
        base = None
        for (method, settings), key in zip(methods.items(), ("plain", "spec", "lookup")):
            row, tokens = host_row(method, settings, prompts, batch, objects, draft, max_new)
            if base is None:
                base, base_tokens = row, tokens
                if batch == 1:
                    plain_b1 = tokens
                elif plain_b1:  # plain decoding of the same prompts, batched vs one at a time
                    figures[f"identical_plain_b{batch}_vs_b1"] = tokens[:len(plain_b1)] == plain_b1
            row["speedup"] = row["tok/s"] / base["tok/s"]
            row["cpu speedup"] = base["cpu s"] / row["cpu s"]  # the same tokens when identical
            # the decode phase: CPU time beyond a plain run's prefill and first token
            row["decode cpu speedup"] = ((base["cpu s"] - prefill["cpu s"])
                                         / max(1e-9, row["cpu s"] - prefill["cpu s"]))
            row["identical"] = tokens == base_tokens
            row["common prefix"] = common_share(tokens, base_tokens)
            if key != "plain":
                figures[f"{key}_speedup_b{batch}"] = row["speedup"]
                figures[f"{key}_cpu_speedup_b{batch}"] = row["cpu speedup"]
                figures[f"{key}_decode_cpu_speedup_b{batch}"] = row["decode cpu speedup"]
                figures[f"identical_{key}_b{batch}"] = row["identical"]
                if row["acceptance"] is not None:
                    figures[f"{key}_acceptance_b{batch}"] = row["acceptance"]
            figures[f"{key}_tokens_per_row_pass_b{batch}"] = row["tokens/row-pass"]
            rows.append(row)
    return rows, figures, plain_b1


def common_share(outputs: list[list[int]], base: list[list[int]]) -> float:
    """The share of ``base``'s tokens that ``outputs`` reproduce before its first difference
    (1.0: identical; a late near-tie flipped gives nearly 1)."""
    same = 0
    for a, b in zip(outputs, base):
        same += next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return same / max(1, sum(len(b) for b in base))


# -- 2. transformers' own assisted generation ----------------------------------------------------


def measure(model, tok, encoded, runs: dict[str, dict]) -> tuple[list[dict], dict]:
    """Greedy ``model.generate(**inputs, **kwargs)`` of every prompt, one at a time, for each
    ``runs[name] = kwargs``: rows with tokens/s, tokens per target pass and (with an assistant
    model) the share of drafted tokens accepted; and each run's tokens per prompt."""
    rows, outputs = [], {}
    for name, kwargs in runs.items():
        with torch.no_grad():  # a first call untimed (the assistant's and generate()'s setup)
            model.generate(**encoded[0], **{**kwargs, "max_new_tokens": 4}, pad_token_id=tok.eos_token_id)
        target = Passes(model)
        draft = Passes(kwargs["assistant_model"]) if "assistant_model" in kwargs else None
        tokens, seconds, cpu, texts = 0, 0.0, 0.0, []
        for inputs in encoded:
            with torch.no_grad():
                start, start_cpu = time.perf_counter(), time.process_time()
                out = model.generate(**inputs, **kwargs, pad_token_id=tok.eos_token_id)
                seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - start_cpu
            generated = out[0, inputs["input_ids"].shape[1]:]
            tokens += generated.shape[0]
            texts.append(generated.tolist())
        target.close()
        outputs[name] = texts
        row = {"method": name, "tokens": tokens, "seconds": seconds, "cpu s": cpu, "tok/s": tokens / seconds,
               "tokens/row-pass": tokens / target.calls}
        if draft is not None:
            draft.close()
            # each target pass yields one token of its own; the rest were accepted draft tokens
            row["acceptance"] = (tokens - target.calls) / max(1, draft.calls)
        rows.append(row)
        print(f"  {name}: {tokens} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
    first = next(iter(outputs))
    for row in rows:
        row["speedup"] = row["tok/s"] / rows[0]["tok/s"]
        row["cpu speedup"] = rows[0]["cpu s"] / row["cpu s"] * row["tokens"] / rows[0]["tokens"]
        row["identical"] = outputs[row["method"]] == outputs[first]
    return rows, outputs


def reference_rows(model, tok, draft, prompts: list[str], max_new: int, lookup: int) -> tuple[list[dict], dict]:
    chat = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]
    encoded = [tok(text, return_tensors="pt", add_special_tokens=False) for text in chat]
    plain = {"max_new_tokens": max_new, "do_sample": False}
    rows, outputs = measure(model, tok, encoded, {
        "generate(), 1 token": {**plain, "max_new_tokens": 1},  # the prefill (and first token)
        "generate()": plain,
        "generate(assistant_model=0.5B)": {**plain, "assistant_model": draft},
        f"generate(prompt_lookup_num_tokens={lookup})": {**plain, "prompt_lookup_num_tokens": lookup},
    })
    prefill, plain_row, spec, look = rows
    same = outputs["generate()"]
    for row in rows[1:]:
        row["speedup"] = row["tok/s"] / plain_row["tok/s"]
        row["cpu speedup"] = plain_row["cpu s"] / row["cpu s"]  # the same tokens when identical
        row["decode cpu speedup"] = (plain_row["cpu s"] - prefill["cpu s"]) / max(1e-9, row["cpu s"] - prefill["cpu s"])
        row["identical"] = outputs[row["method"]] == same
        row["common prefix"] = common_share(outputs[row["method"]], same)
    prefill["speedup"] = prefill["cpu speedup"] = prefill["identical"] = None
    figures = {"reference_spec_speedup_b1": spec["speedup"], "reference_spec_cpu_speedup_b1": spec["cpu speedup"],
               "reference_spec_decode_cpu_speedup_b1": spec["decode cpu speedup"],
               "reference_spec_acceptance_b1": spec["acceptance"], "reference_lookup_speedup_b1": look["speedup"],
               "reference_lookup_cpu_speedup_b1": look["cpu speedup"],
               "reference_lookup_decode_cpu_speedup_b1": look["decode cpu speedup"],
               "identical_reference": spec["identical"] and look["identical"]}
    return rows, {"figures": figures, "plain": outputs["generate()"]}


# -- 3. what a forward pass costs ----------------------------------------------------------------


def forward_cost(models: dict, batches: list[int], widths: list[int], repeats: int,
                 context: int = 256) -> tuple[list[dict], dict]:
    """One forward pass over B rows x q new tokens at a ``context``-token KV (the new tokens
    dropped again after each pass; the widths taken in turn, ``repeats`` rounds): median wall
    time and median CPU time of the thread (robust to the neighbours' load with one torch
    thread), the latter relative to the target's pass of one token per row."""
    rows, base = [], {}
    random = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, model in models.items():
            for batch in batches:
                cache = model(torch.randint(100, 20000, (batch, context), generator=random), use_cache=True).cache
                new = {width: torch.randint(100, 20000, (batch, width), generator=random) for width in widths}
                wall: dict[int, list[float]] = {width: [] for width in widths}
                cpu: dict[int, list[float]] = {width: [] for width in widths}
                for _ in range(repeats):
                    for width in widths:
                        start, start_cpu = time.perf_counter(), time.thread_time()
                        model(new[width], cache=cache, use_cache=True)
                        wall[width].append(time.perf_counter() - start)
                        cpu[width].append(time.thread_time() - start_cpu)
                        cache.crop(-width)
                for width in widths:
                    seconds = statistics.median(cpu[width])
                    base.setdefault(batch, seconds)  # the target comes first, its q = 1 first
                    rows.append({"model": name, "batch": batch, "tokens/row": width,
                                 "seconds": statistics.median(wall[width]), "cpu s": seconds,
                                 "vs target 1 token/row": seconds / base[batch]})
                del cache
    figures = {f"{r['model'].split('-')[2]}_b{r['batch']}_q{r['tokens/row']}": r["vs target 1 token/row"]
               for r in rows}
    return rows, figures


# -- the earlier small pairs (--small) ----------------------------------------------------------

PASSAGE = ("The committee met on Tuesday to review the budget for the new library. After a long "
           "discussion, the members agreed to fund the reading room, the children's section and the "
           "archive, but postponed the decision on the rooftop garden until the spring meeting.")
SMOLLM2_PROMPTS = [
    f"Repeat this text exactly:\n{PASSAGE}",
    f"Copy the following paragraph word for word:\n{PASSAGE}",
    "List the days of the week, one per line.",
    "Write the numbers from one to twenty in words, separated by commas.",
]


def truncated(model, layers: int, path: str) -> str:
    draft = copy.deepcopy(model)
    draft.model.layers = draft.model.layers[:layers]
    draft.config.num_hidden_layers = layers
    draft.save_pretrained(path)
    return path


def small_rows(quick: bool) -> tuple[list[tuple[str, list[dict]]], dict]:
    """demo-arith with its trained draft; SmolLM2-135M-Instruct with its first 10 layers as draft
    (no smaller sibling here): model.generate with metagen's generate_kwargs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metagen_plugins.demo.train import held_out

    def runs(model, tok, host_draft: str, new: int) -> dict:
        configs = {"plain": {}, "draft model": {"draft_model": host_draft},
                   "prompt lookup (3 tokens)": {"prompt_lookup_num_tokens": 3}}
        return {name: metagen_plugins.generate_kwargs({"host": host, "generation": {"max_new_tokens": new}},
                                                      model=model, tokenizer=tok) for name, host in configs.items()}

    out, figures = [], {}
    path = resolve("demo-arith")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    problems = held_out()[: 10 if quick else 40]
    rows, _ = measure(model, tok, [tok(p.prompt, return_tensors="pt") for p in problems],
                      runs(model, tok, "demo-arith-draft", 48))
    out.append((f"demo-arith (1.8M) with demo-arith-draft (0.2M), greedy, {len(problems)} held-out problems", rows))
    figures["demo-arith"] = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}

    new = 32 if quick else 96
    prompts = SMOLLM2_PROMPTS[:2] if quick else SMOLLM2_PROMPTS
    path = resolve("smollm2-135m-instruct")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    draft_dir = truncated(model, 10, tempfile.mkdtemp(prefix="smollm2-draft10-"))
    encoded = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                       return_tensors="pt", return_dict=True) for p in prompts]
    rows, _ = measure(model, tok, encoded, runs(model, tok, draft_dir, new))
    out.append((f"SmolLM2-135M-Instruct with its first 10 of 30 layers as draft, greedy, {len(prompts)} prompts "
                f"x up to {new} tokens", rows))
    figures["smollm2-135m-instruct"] = {r["method"]: {k: v for k, v in r.items() if k != "method"} for r in rows}
    return out, figures


def main() -> None:
    def extra(parser):
        parser.add_argument("--parts", default="host,reference,cost", help="which of host, reference, cost to run")
        parser.add_argument("--batches", default=None, help="batch sizes of the host part (default 1,4,16; quick 1,4)")
        parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                            help="of both models (bfloat16 default: faster here, see docs/transformers-host.md)")
        parser.add_argument("--lookup", type=int, default=4, help="prompt_lookup_num_tokens")
        parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64, quick 32")
        parser.add_argument("--single", type=int, default=None,
                            help="prompts run one at a time at batch 1 and in the reference (default 3, quick 2)")
        parser.add_argument("--repeats", type=int, default=None, help="passes per cost figure (default 5, quick 3)")
        parser.add_argument("--small", action="store_true", help="also the demo pair and SmolLM2 rows")

    args = arguments(__doc__, extra)
    parts = set(args.parts.split(","))
    batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,4,16")).split(",")]
    max_new = args.max_new_tokens or (32 if args.quick else 64)
    single = args.single or (2 if args.quick else 3)
    tasks = [task.prompt for task in code_tasks()]
    if max(batches) > len(tasks):
        raise SystemExit(f"--batches: at most {len(tasks)} prompts (the code tasks)")
    target_path = resolve(TARGET)
    model, tok = load_model(target_path, dtype=args.dtype), load_tokenizer(target_path)
    # the object [host] draft_model loads (in the model's dtype): its passes are counted
    draft = load_model_cached(DRAFT, dtype=args.dtype)
    run_parts(args, parts, batches, max_new, single, tasks, model, tok, draft, DRAFT)


def run_parts(args, parts, batches, max_new, single, tasks, model, tok, draft, draft_setting) -> None:
    figures: dict = {"target": TARGET, "draft": DRAFT, "dtype": args.dtype, "max_new_tokens": max_new,
                     "lookup": args.lookup, "single_prompts": single, "batches": batches}
    sections = []
    if "host" in parts:
        rows, more, plain_b1 = host_rows({"model": model, "tokenizer": tok}, draft, draft_setting, tasks, batches,
                                         single, max_new, args.lookup)
        figures.update(more)
        sections.append((f"through the transformers host: {TARGET} drafted by {DRAFT}, both in {args.dtype}, greedy, "
                         f"code tasks, up to {max_new} new tokens; "
                         f"batch B = B prompts in flight (batch 1: {single} prompts one at a time)", rows,
                         ["batch", "method", "prompts", "tokens", "seconds", "cpu s", "tok/s", "speedup", "cpu speedup",
                          "decode cpu speedup", "tokens/row-pass", "acceptance", "identical", "common prefix"]))
    if "reference" in parts:
        rows, ref = reference_rows(model, tok, draft, tasks[:single], max_new, args.lookup)
        figures.update(ref["figures"])
        if "host" in parts and 1 in batches:  # the host's plain decoding is generate()'s, EOS left out
            eos = set(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
            figures["identical_host_vs_generate_b1"] = plain_b1 == [[t for t in seq if t not in eos]
                                                                    for seq in ref["plain"]]
        sections.append((f"reference: transformers' model.generate() directly, {single} prompts one at a time, "
                         f"up to {max_new} new tokens", rows,
                         ["method", "tokens", "seconds", "cpu s", "tok/s", "speedup", "cpu speedup",
                          "decode cpu speedup", "tokens/row-pass", "acceptance", "identical", "common prefix"]))
    if "cost" in parts:
        repeats = args.repeats or (3 if args.quick else 5)
        rows, more = forward_cost({TARGET: model, DRAFT: draft}, batches, [1, 2, 3, 5, 8], repeats)
        figures["forward_cost"] = more
        sections.append((f"one forward pass over B rows x q new tokens at a 256-token context, medians of {repeats}; "
                         f"relative: CPU time vs the target's pass of 1 token/row at that batch",
                         rows, ["model", "batch", "tokens/row", "seconds", "cpu s", "vs target 1 token/row"]))
    if args.small:
        small, more = small_rows(args.quick)
        figures.update(more)
        columns = ["method", "tokens", "tok/s", "speedup", "tokens/row-pass", "acceptance", "identical"]
        sections += [(title, rows, columns) for title, rows in small]
    print(f"torch threads: {torch.get_num_threads()} (--threads); every ratio is within this one run")
    for title, rows, columns in sections:
        print(f"\n{title}")
        table(rows, columns)
    finish("speculative", figures)


if __name__ == "__main__":
    main()
