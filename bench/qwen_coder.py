"""Meta-generation on a second real model, Qwen2.5-Coder-0.5B-Instruct (the built-in model name
``qwen2.5-coder-0.5b-instruct``), on two tasks (bench/qwen_tasks.py):

``--task arith``: harder arithmetic generated from a seed (two-digit products, three-operand
expressions, two- and three-step word problems; the model is asked for brief equations and a
``\\boxed{N}``; the answer is the last ``\\boxed{}`` number, else the last number). Greedy
decoding, and N samples at temperature T recorded once; the selection
rules then run on these same samples through the strategies' own classes (replaying the recorded
samples as their Generator): self-consistency, best-of-N and weighted majority with the
``calculator`` verifier, and ``calculator_vote`` (the calculator repairs each sample's arithmetic,
then the answers vote) on the first k samples; greedy with the calculator is calculator_vote over
the greedy text. The model often answers with a Python block followed by an ``output`` block it
made up; the "code run" rows run each reply's Python block in the sandbox and take the last
number it prints instead of the reply's own answer (a reply without code keeps its answer; in
the "calculator, code run" rows, its calculator-repaired answer).
``--runs ...,pal`` adds ``program_aided`` (PAL): N programs per question from its code prompt
(the question without the ``\boxed{}`` instruction), stopped at a closed code fence, run in the
sandbox, the last printed numbers voting; its records may go to a file of their own and are
merged by question.

``--task code``: 27 small programming tasks written for this bench (bench/qwen_code_tasks.json),
each with 2 visible tests shown in the prompt and 3-6 hidden tests that are not. Greedy, and N
samples; best-of-k selected by the ``code_tests`` verifier on the VISIBLE tests (the prompt's
assert lines), every row scored on the HIDDEN tests (all must pass). pass@1 is the mean over the
samples, pass@N whether any sample passes.

Every row reports accuracy, the exact McNemar p against greedy on the same problems (not for the
oracle and mean rows), and the generated tokens and FLOPs per problem (of the run the rule selects
from; a rule using k of the N samples is charged the prompt's prefill plus k/N of the generated
tokens; verifiers cost no model FLOPs). Records are appended per chunk of problems, so a long run
can be reported at any point and resumed:

    python bench/qwen_coder.py --task arith [--questions 48] [--n 8] [--temperature 0.7]
                               [--engine float32|bfloat16|vllm] [--records r.jsonl]
                               [--results docs/qwen_arith.json] [--plot docs/qwen_arith.png]
    python bench/qwen_coder.py --task code [--records c.jsonl] ...
    python bench/qwen_coder.py --task arith --runs pal --records p.jsonl    # PAL programs only
    python bench/qwen_coder.py --task arith --from-records r.jsonl [p.jsonl] --results ... --plot ...
"""

from __future__ import annotations

from _common import (CLOSED_FENCE, NUMBER, Replay, append_records, arguments, cost_rows, finish, merge_records,
                     read_records, record_runs, start_vllm, table, weighted_vote)

import json
import sys
import tempfile
import time
from pathlib import Path

import metagen_plugins
from metagen_hooks import Budget
from metagen_hooks import answers
from metagen_plugins import evaluate
from qwen_tasks import ANSWER_PATTERN, ARITH_SUFFIX, arithmetic, code_tasks

MODEL = "qwen2.5-coder-0.5b-instruct"
TITLE = "Qwen2.5-Coder-0.5B-Instruct"
PAL_TEMPLATE = ("Write a Python program that computes the answer to this question and prints it. Reply with only "
                "the program, in a ```python code block.\n\nQuestion: {prompt}")
"""PAL's code prompt here. With program_aided's default ("Write a short Python program that ... prints
only the answer") the model answered the first question in prose, without code, in both samples
tried; asked for only a code block, it writes one."""
CODE_STOP = ["\n```\n"]
"""A reply's code block ends at its closing fence (the opening one is ```` ```python ````)."""


def main() -> None:
    def extra(parser):
        parser.add_argument("--task", choices=["arith", "code"], required=True)
        parser.add_argument("--questions", type=int, default=None,
                            help="arith: how many (default 48, quick 4); code: the first K tasks (default all)")
        parser.add_argument("--seed", type=int, default=2000, help="question seed (arith) and sampling seed")
        parser.add_argument("--n", type=int, default=8, help="samples per problem")
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--max-new-tokens", type=int, default=None, help="default: arith 400, code 320")
        parser.add_argument("--engine", choices=["float32", "bfloat16", "vllm"], default="float32",
                            help="transformers host in float32 or bfloat16, or a vLLM server (bfloat16)")
        parser.add_argument("--batch", type=int, default=4, help="problems run at once (x N samples)")
        parser.add_argument("--runs", default="greedy,samples",
                            help="comma-separated model runs to make, of greedy, samples, pal (arith only)")
        parser.add_argument("--shard", default="0/1", help="I/K: run every K-th problem from the I-th")
        parser.add_argument("--records", help="append per-problem records here (JSON lines); resumes")
        parser.add_argument("--from-records", nargs="+", metavar="FILE", help="report saved records; run nothing")
        parser.add_argument("--results", help="write the results file (for `metagen plot`) here")
        parser.add_argument("--plot", help="draw accuracy vs FLOPs to this PNG/SVG")

    args = arguments(__doc__, extra)
    if args.from_records:
        records = merge_records(read_records(args.from_records))
    else:
        records = merge_records(read_records([args.records] if args.records else []) + measure(args))
    complete = [r for r in records if "greedy" in r and "samples" in r]
    if len(complete) < len(records):  # e.g. PAL runs recorded ahead of the plain ones
        print(f"{len(records) - len(complete)} of {len(records)} problems lack the greedy or samples run: "
              f"reported without them" if complete else
              "recorded; the report needs the greedy and samples runs too: --from-records with their file(s) as well")
    records = complete
    (report_arith if args.task == "arith" else report_code)(records, args)


def problems(args) -> list[tuple[int, str, dict]]:
    """(index, prompt, what the report needs to score it) for the chosen task."""
    if args.task == "arith":
        count = args.questions or (4 if args.quick else 48)
        return [(i, q.prompt, {"kind": q.kind, "answer": q.answer}) for i, q in enumerate(arithmetic(count, args.seed))]
    tasks = code_tasks()[:args.questions or (2 if args.quick else None)]
    return [(i, t.prompt, {"name": t.name, "hidden": t.hidden}) for i, t in enumerate(tasks)]


def measure(args) -> list[dict]:
    shard, shards = (int(x) for x in args.shard.split("/"))
    wanted = args.runs.split(",")
    if set(wanted) - {"greedy", "samples", "pal"} or ("pal" in wanted and args.task != "arith"):
        raise SystemExit(f"qwen_coder.py: --runs {args.runs!r}: choose among greedy, samples and (arith) pal")
    recorded = merge_records(read_records([args.records])) if args.records else []
    done = {r["index"] for r in recorded if all(label in r for label in wanted)}
    items = [p for p in problems(args) if p[0] % shards == shard and p[0] not in done]
    if not items:
        return []
    max_new = args.max_new_tokens or (400 if args.task == "arith" else 320)
    base = {"host": {"model": MODEL},
            "generation": {"max_new_tokens": max_new, "seed": args.seed},
            "processors": [{"name": "temperature", "temperature": args.temperature}],
            "stopping": [] if args.task == "arith" else [{"name": "stop_strings", "stop": CODE_STOP}]}
    pal = {**base,
           "strategy": {"name": "program_aided", "n": args.n, "template": PAL_TEMPLATE, "answer_pattern": NUMBER,
                        "isolation": isolation()},
           "stopping": [{"name": "regex", "pattern": CLOSED_FENCE}],
           "generation": {**base["generation"], "max_new_tokens": 256}}
    runs = [("greedy", evaluate.greedy(base)), ("samples", {**base, "strategy": {"name": "parallel", "n": args.n}}),
            ("pal", pal)]
    runs = [(label, config) for label, config in runs if label in wanted]
    objects, server = {}, None
    if args.engine == "vllm":
        # eager mode: the compiled start had not finished in 600 s here; long replies on a slow
        # machine need more than the remote host's default 60-s request timeout
        host = {"name": "vllm", "model": MODEL, "dtype": "bfloat16", "max_model_len": 2048,
                "gpu_memory_utilization": 0.1, "enforce_eager": True, "timeout": 3600}
        server = start_vllm(host, Path(tempfile.gettempdir()) / f"qwen_coder_{args.task}_vllm.log",
                            ("--no-enable-chunked-prefill",))
        runs = [(label, {**config, "host": server.host}) for label, config in runs]
    else:
        from metagen_plugins.models import load_model, load_tokenizer, resolve

        path = resolve(MODEL)
        objects = {"model": load_model(path, dtype=args.engine), "tokenizer": load_tokenizer(path)}
    out, start = [], time.perf_counter()
    try:
        for first in range(0, len(items), args.batch):
            chunk = items[first:first + args.batch]
            recorded = record_runs([r for r in runs if r[0] != "pal"], [prompt for _, prompt, _ in chunk], **objects)
            if any(label == "pal" for label, _ in runs):  # PAL's code prompt takes the bare question
                questions = [prompt.removesuffix(ARITH_SUFFIX) for _, prompt, _ in chunk]
                for record, of_pal in zip(recorded, record_runs([r for r in runs if r[0] == "pal"], questions,
                                                                **objects)):
                    record.update(of_pal)
            records = [{"index": i, **about, **runs_of, "seed": args.seed, "n": args.n,
                        "temperature": args.temperature, "engine": args.engine, "max_new_tokens": max_new}
                       for (i, _, about), runs_of in zip(chunk, recorded)]
            append_records(args.records, records)
            out.extend(records)
            print(f"  [{args.shard}] {first + len(chunk)}/{len(items)} problems ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
    return out


def replay(strategy: str, params: dict, scorer: dict | None, prompt: str, texts: list[str]):
    """The best candidate of ``strategy`` (built from the registry as a configuration would)
    run on recorded ``texts``."""
    registry = metagen_plugins.get_registry()
    built = metagen_plugins.build(registry.get("strategies", strategy), params)
    scorer_obj = metagen_plugins.build(registry.get("scorers", scorer["name"]), scorer["params"]) if scorer else None
    return built.run(prompt, Replay(texts), scorer_obj, Budget()).best


def answer(text: str | None) -> str | None:
    return answers.extract(text, ANSWER_PATTERN) if text is not None else None


def report_arith(records: list[dict], args) -> None:
    if not records:
        print("no records")
        return
    n = records[0]["n"]
    vote = {"answer_pattern": ANSWER_PATTERN}
    calc = {"name": "calculator", "params": {}}
    rules = [("greedy + calculator", "greedy", "calculator_vote", {"n": 1, **vote}, None, 1),
             (f"self_consistency@{n}", "samples", "self_consistency", {"n": n, **vote}, None, n),
             (f"best_of_{n}[calculator]", "samples", "best_of_n", {"n": n}, calc, n),
             (f"weighted_majority@{n}[calculator]", "samples", "weighted_majority", {"n": n, **vote}, calc, n)]
    rules += [(f"calculator_vote@{k}", "samples", "calculator_vote", {"n": k, **vote}, None, k)
              for k in sorted({max(1, n // 4), max(1, n // 2), n})]
    correct = {"greedy": [answer(r["greedy"]["texts"][0]) == r["answer"] for r in records]}
    cost = {"greedy": ("greedy", 1.0)}
    for name, source, strategy, params, scorer, used in rules:
        correct[name] = [answer(getattr(replay(strategy, params, scorer, "", r[source]["texts"]), "text", None))
                         == r["answer"] for r in records]
        cost[name] = (source, used / len(records[0][source]["texts"]))
    run_code = code_runner()
    correct["greedy, code run"] = [run_code(r["greedy"]["texts"][0]) == r["answer"] for r in records]
    cost["greedy, code run"] = ("greedy", 1.0)
    name = f"self_consistency@{n}, code run"
    correct[name] = [weighted_vote(r["samples"]["texts"], [1.0] * n, run_code) == r["answer"] for r in records]
    cost[name] = ("samples", 1.0)
    # both tools: a reply's code run where it has code, else its arithmetic repaired by the calculator
    from metagen_plugins.builtin.scorers.calculator import repair

    run_both = code_runner(lambda text: answer(repair(text)[0]))
    correct["greedy + calculator, code run"] = [run_both(r["greedy"]["texts"][0]) == r["answer"] for r in records]
    cost["greedy + calculator, code run"] = ("greedy", 1.0)
    name = f"calculator_vote@{n}, code run"
    correct[name] = [weighted_vote(r["samples"]["texts"], [1.0] * n, run_both) == r["answer"] for r in records]
    cost[name] = ("samples", 1.0)
    descriptive = set()
    if all("pal" in r for r in records):
        pal = metagen_plugins.build(metagen_plugins.get_registry().get("strategies", "program_aided"),
                                    {"n": n, "answer_pattern": NUMBER, "isolation": isolation()})
        outcomes = [pal.run("", Replay(r["pal"]["texts"]), None, Budget()) for r in records]
        correct[f"program_aided@{n}"] = [bool(o.best) and o.best.text == r["answer"] for r, o in zip(records, outcomes)]
        correct[f"pal pass@{n} (oracle)"] = [r["answer"] in [c.meta["program_aided"]["answer"] for c in o.candidates]
                                             for r, o in zip(records, outcomes)]
        cost[f"program_aided@{n}"] = cost[f"pal pass@{n} (oracle)"] = ("pal", 1.0)
        descriptive.add(f"pal pass@{n} (oracle)")
    mean_name, oracle = "sample mean (pass@1)", f"pass@{n} (oracle)"
    correct[mean_name] = [sum(answer(t) == r["answer"] for t in r["samples"]["texts"]) / n for r in records]
    correct[oracle] = [r["answer"] in [answer(t) for t in r["samples"]["texts"]] for r in records]
    cost[mean_name], cost[oracle] = ("samples", 1 / n), ("samples", 1.0)
    no_answer = sum(answer(t) is None for r in records for t in r["samples"]["texts"]) / (n * len(records))
    task = f"{TITLE}, {len(records)} harder arithmetic questions (seed {records[0]['seed']})"
    about = {"task": task, "questions": len(records), "seed": records[0]["seed"], "n": n,
             "temperature": records[0]["temperature"], "engine": records[0]["engine"],
             "samples_without_answer": no_answer}
    rows = cost_rows(records, correct, cost, descriptive={mean_name, oracle} | descriptive)
    kinds = []
    for kind in sorted({r["kind"] for r in records}):
        at = [i for i, r in enumerate(records) if r["kind"] == kind]
        kinds.append({"kind": kind, "questions": len(at),
                      **{name: sum(correct[name][i] for i in at) for name in correct
                         if name not in {mean_name, oracle} | descriptive}})
    show(rows, task, about, args, extra=kinds)
    finish("qwen_coder_arith", {"rows": rows, "by_kind": kinds, **about})


def isolation() -> str:
    """The sandbox's full isolation where it is available (root on Linux), else resource limits."""
    from metagen_plugins.sandbox import probe

    return "full" if probe("full") is None else "limits"


def code_runner(otherwise=None):
    """``run(text)``: a reply's answer with its Python block run in the sandbox: the last number
    the block prints, when it has a block that runs and prints one; else ``otherwise(text)``,
    by default the reply's own answer (so a made-up ``output`` block after the code does not
    count)."""
    otherwise = otherwise or answer
    pal = metagen_plugins.build(metagen_plugins.get_registry().get("strategies", "program_aided"),
                                {"n": 1, "answer_pattern": NUMBER, "isolation": isolation()})
    seen: dict[str, str | None] = {}

    def run(text: str) -> str | None:
        if text not in seen:
            printed = pal.execute(text)[0] if "```" in text else None
            seen[text] = printed if printed is not None else otherwise(text)
        return seen[text]

    return run


def report_code(records: list[dict], args) -> None:
    if not records:
        print("no records")
        return
    from metagen_plugins.builtin.scorers.code_tests import CodeTests

    n = records[0]["n"]
    tasks = {t.name: t for t in code_tasks()}
    visible = {"name": "code_tests", "params": {"tests_in_prompt": True, "mode": "fraction"}}
    hidden_cache: dict[tuple[str, str], bool] = {}

    def passes(record: dict, text: str | None) -> bool:
        """All of the task's hidden tests pass on ``text``'s program (in the sandbox)."""
        if text is None:
            return False
        key = (record["name"], text)
        if key not in hidden_cache:
            scorer = CodeTests(tests=record["hidden"], mode="all")
            hidden_cache[key] = scorer.score(tasks[record["name"]].prompt, [Replay([text]).sample([""])[0][0]])[0] == 1.0
        return hidden_cache[key]

    correct = {"greedy": [passes(r, r["greedy"]["texts"][0]) for r in records]}
    cost = {"greedy": ("greedy", 1.0)}
    for k in sorted({max(1, n // 4), max(1, n // 2), n}):
        name = f"best_of_{k}[code_tests visible]"
        correct[name] = [passes(r, getattr(replay("best_of_n", {"n": k}, visible, tasks[r["name"]].prompt,
                                                  r["samples"]["texts"]), "text", None)) for r in records]
        cost[name] = ("samples", k / n)
    mean_name, oracle = "sample mean (pass@1)", f"pass@{n} (oracle)"
    outcomes = [[passes(r, t) for t in r["samples"]["texts"]] for r in records]
    correct[mean_name] = [sum(o) / n for o in outcomes]
    correct[oracle] = [any(o) for o in outcomes]
    cost[mean_name], cost[oracle] = ("samples", 1 / n), ("samples", 1.0)
    task = f"{TITLE}, {len(records)} code tasks (hidden tests)"
    about = {"task": task, "problems": len(records), "seed": records[0]["seed"], "n": n,
             "temperature": records[0]["temperature"], "engine": records[0]["engine"]}
    rows = cost_rows(records, correct, cost, descriptive={mean_name, oracle})
    per_task = [{"task": r["name"], "greedy": int(correct["greedy"][i]), "samples_passing": sum(outcomes[i]),
                 f"best_of_{n}": int(correct[f"best_of_{n}[code_tests visible]"][i])} for i, r in enumerate(records)]
    show(rows, task, about, args, extra=per_task)
    finish("qwen_coder_code", {"rows": rows, "per_task": per_task, **about})


def show(rows: list[dict], task: str, about: dict, args, extra: list[dict]) -> None:
    print(f"{task}; N={about['n']}, T={about['temperature']}, engine {about['engine']}")
    table([{**r, "GFLOPs": r["flops"] / 1e9} for r in rows],
          ["strategy", "accuracy", "correct", "p_vs_greedy", "tokens", "GFLOPs"])
    print()
    table(extra, list(extra[0]))
    results = evaluate.results_file(rows, **about)
    if args.results:
        with open(args.results, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    if args.plot:
        from metagen_plugins.plot import plot

        plot(results, args.plot, title=f"{task}: accuracy vs compute")


if __name__ == "__main__":
    main()
