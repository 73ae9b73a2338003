"""Greedy vs self-consistency@N on SmolLM2-135M-Instruct (a real pretrained model, not trained
here), on simple arithmetic and word questions generated from a seed.

Both rows run metagen_plugins.run() with `metagen run`'s default configuration
(metagen_plugins/defaults/smollm2-135m-instruct.toml: chat template, stop at a blank line,
answer = the first equation's result); greedy is the same configuration without sampling or
strategy. The oracle row is the share of questions where any of the N samples is right
(pass@N), the ceiling of any selection rule over those samples.

    python bench/smollm2.py [--quick] [--questions 200] [--n 8] [--temperature 0.7]
                            [--results docs/smollm2.json] [--plot docs/smollm2.png]

On a shared CPU, split the questions over processes and report them together:

    python bench/smollm2.py --questions 200 --shard 0/2 --records a.json &
    python bench/smollm2.py --questions 200 --shard 1/2 --records b.json &
    python bench/smollm2.py --from-records a.json b.json --results ... --plot ...
"""

from __future__ import annotations

from _common import arguments, finish, table

import json
import sys
import time
from collections import Counter

import metagen_plugins
from metagen_plugins import evaluate
from metagen_hooks import answers
from metagen_plugins.demo.questions import questions


def main() -> None:
    def extra(parser):
        parser.add_argument("--questions", type=int, default=None, help="how many (default 200, quick 12)")
        parser.add_argument("--seed", type=int, default=1000, help="question seed")
        parser.add_argument("--n", type=int, default=8, help="self-consistency samples")
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--shard", default="0/1", help="I/K: run every K-th question from the I-th")
        parser.add_argument("--records", help="write the per-question records here (JSON)")
        parser.add_argument("--from-records", nargs="+", metavar="FILE", help="report saved records; run nothing")
        parser.add_argument("--results", help="write the results file (for `metagen plot`) here")
        parser.add_argument("--plot", help="draw accuracy vs FLOPs to this PNG/SVG")

    args = arguments(__doc__, extra)
    if args.from_records:
        saved = [json.loads(open(path, encoding="utf-8").read()) for path in args.from_records]
        about = saved[0]["about"]
        records = sorted((r for s in saved for r in s["records"]), key=lambda r: r["index"])
    else:
        about, records = measure(args)
        if args.records:
            with open(args.records, "w", encoding="utf-8") as out:
                json.dump({"about": about, "records": records}, out)
    report(about, records, args)


def measure(args) -> tuple[dict, list[dict]]:
    count = args.questions or (12 if args.quick else 200)
    shard, shards = (int(x) for x in args.shard.split("/"))
    items = [(i, q) for i, q in enumerate(questions(count, seed=args.seed)) if i % shards == shard]
    prompts = [q.prompt for _, q in items]

    config = evaluate.default_config()
    config["processors"] = [{"name": "temperature", "temperature": args.temperature}]
    config["strategy"]["n"] = args.n
    pattern = evaluate.answer_pattern(config)

    from metagen_plugins.hosts.transformers import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    path = resolve(evaluate.DEFAULT_MODEL)
    model, tokenizer = load_model(path), load_tokenizer(path)
    records = [{"index": i, "kind": q.kind, "answer": q.answer} for i, q in items]
    for label, cfg in (("greedy", evaluate.greedy(config)), ("sc", config)):
        start = time.perf_counter()
        done = iter(range(1, len(items) + 1))

        def progress(_, label=label):
            i = next(done)
            if i % 10 == 0:
                print(f"  [{args.shard}] {label}: {i}/{len(items)} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr, flush=True)

        results = metagen_plugins.run(cfg, prompts, model=model, tokenizer=tokenizer, on_result=progress)
        for record, result in zip(records, results):
            spent = result.budget.spent()
            record[label] = {"answer": evaluate.extract(result, pattern), "tokens": spent["tokens_generated"],
                             "flops": spent["flops"], "wall_time": spent["wall_time"],
                             "samples": [answers.extract(c.text, pattern) for c in result.candidates]}
    about = {"task": f"SmolLM2-135M-Instruct, {count} arithmetic/word questions (seed {args.seed})",
             "questions": count, "seed": args.seed, "n": args.n, "temperature": args.temperature}
    return about, records


def report(about: dict, records: list[dict], args) -> None:
    n, count = about["n"], len(records)

    def mean(label, key):
        return sum(r[label][key] for r in records) / count

    def row(name, label, correct):
        return {"strategy": name, "prompts": count, "accuracy": correct / count, "correct": correct,
                "tokens": mean(label, "tokens"), "flops": mean(label, "flops"), "wall_time": mean(label, "wall_time")}

    greedy = sum(r["greedy"]["answer"] == r["answer"] for r in records)
    voted = sum(r["sc"]["answer"] == r["answer"] for r in records)
    oracle = sum(r["answer"] in r["sc"]["samples"] for r in records)
    single = sum(s == r["answer"] for r in records for s in r["sc"]["samples"])
    drawn = sum(len(r["sc"]["samples"]) for r in records)
    rows = [row("greedy", "greedy", greedy), row(f"self_consistency@{n}", "sc", voted),
            {**row(f"pass@{n} (oracle)", "sc", oracle), "correct": None}]
    sample_row = {"strategy": f"one sample at T={about['temperature']} (mean)", "accuracy": single / max(drawn, 1),
                  "tokens": mean("sc", "tokens") / n}

    print(f"{about['task']}; N={n}, T={about['temperature']}; {count} questions")
    shown = [{**r, "GFLOPs": r["flops"] / 1e9, "s/question": r["wall_time"]} for r in rows]
    shown.insert(1, sample_row)
    table(shown, ["strategy", "accuracy", "correct", "tokens", "GFLOPs", "s/question"])
    no_answer = sum(r["greedy"]["answer"] is None for r in records) / count
    no_votes = sum(all(s is None for s in r["sc"]["samples"]) for r in records) / count
    print(f"no extractable answer: greedy {no_answer:.1%}; all {n} samples {no_votes:.1%}")
    print(f"self-consistency vs greedy per question: "
          f"{sum(r['sc']['answer'] == r['answer'] != r['greedy']['answer'] for r in records)} fixed, "
          f"{sum(r['greedy']['answer'] == r['answer'] != r['sc']['answer'] for r in records)} broken")

    per_kind: dict[str, Counter] = {}
    for r in records:
        c = per_kind.setdefault(r["kind"], Counter())
        c["questions"] += 1
        c["greedy"] += r["greedy"]["answer"] == r["answer"]
        c["sc"] += r["sc"]["answer"] == r["answer"]
        c["oracle"] += r["answer"] in r["sc"]["samples"]
    kinds = [{"kind": k, "questions": c["questions"], "greedy": c["greedy"], f"sc@{n}": c["sc"],
              f"pass@{n}": c["oracle"]} for k, c in sorted(per_kind.items())]
    print("\nby question kind (correct / questions)")
    table(kinds, ["kind", "questions", "greedy", f"sc@{n}", f"pass@{n}"])

    results = evaluate.results_file(rows, **about)
    if args.results:
        with open(args.results, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    if args.plot:
        from metagen_plugins.plot import plot

        plot(results, args.plot, title=f"SmolLM2-135M-Instruct, {count} questions: accuracy vs compute")
    finish("smollm2", {"rows": rows, "by_kind": kinds, **about})


if __name__ == "__main__":
    main()
