"""Greedy vs self-consistency@N on SmolLM2-135M-Instruct (a real pretrained model, not trained
here), on simple arithmetic and word questions generated from a seed.

Both rows run metagen_plugins.run() with `metagen run`'s default configuration
(metagen_plugins/defaults/smollm2-135m-instruct.toml: chat template, stop at a blank line,
answer = the first equation's result); greedy is the same configuration without sampling or
strategy. The oracle row is the share of questions where any of the N samples is right
(pass@N), the ceiling of any selection rule over those samples.

    python bench/smollm2.py [--quick] [--questions 300] [--n 8] [--temperature 0.7]
                            [--results docs/smollm2.json] [--plot docs/smollm2.png]
"""

from __future__ import annotations

from _common import arguments, finish, table

import json
import sys
import time
from collections import Counter

import metagen_plugins
from metagen_plugins import evaluate
from metagen_plugins.builtin import answers
from metagen_plugins.demo.questions import questions


def main() -> None:
    def extra(parser):
        parser.add_argument("--questions", type=int, default=None, help="how many (default 300, quick 12)")
        parser.add_argument("--seed", type=int, default=1000, help="question seed")
        parser.add_argument("--n", type=int, default=8, help="self-consistency samples")
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--results", help="write the results file (for `metagen plot`) here")
        parser.add_argument("--plot", help="draw accuracy vs FLOPs to this PNG/SVG")

    args = arguments(__doc__, extra)
    count = args.questions or (12 if args.quick else 300)
    items = questions(count, seed=args.seed)
    prompts, expected = [q.prompt for q in items], [q.answer for q in items]

    config = evaluate.default_config()
    config["processors"] = [{"name": "temperature", "temperature": args.temperature}]
    config["strategy"]["n"] = args.n
    pattern = evaluate.answer_pattern(config)

    from metagen_plugins.hosts.transformers import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    path = resolve(evaluate.DEFAULT_MODEL)
    model, tokenizer = load_model(path), load_tokenizer(path)

    rows, per_kind = [], {}
    runs = {}
    for label, cfg in (("greedy", evaluate.greedy(config)), (f"self_consistency@{args.n}", config)):
        start = time.perf_counter()
        results = metagen_plugins.run(cfg, prompts, model=model, tokenizer=tokenizer)
        seconds = time.perf_counter() - start
        runs[label] = results
        rows.append(evaluate.row(label, results, expected, pattern))
        print(f"  {label}: {rows[-1]['accuracy']:.1%} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        for q, r in zip(items, results):
            hit = evaluate.extract(r, pattern) == q.answer
            per_kind.setdefault(q.kind, Counter())[label] += hit
            per_kind[q.kind]["count"] += 1 if label == "greedy" else 0

    sc = runs[f"self_consistency@{args.n}"]
    oracle = sum(any(answers.extract(c.text, pattern) == q.answer for c in r.candidates)
                 for q, r in zip(items, sc)) / count
    sample_acc = sum(answers.extract(c.text, pattern) == q.answer for q, r in zip(items, sc)
                     for c in r.candidates) / max(sum(len(r.candidates) for r in sc), 1)
    no_answer = sum(evaluate.extract(r, evaluate.answer_pattern(config)) is None for r in runs["greedy"]) / count
    rows.insert(1, {**rows[1], "strategy": f"one sample at T={args.temperature} (mean)", "accuracy": sample_acc,
                    "correct": None, "tokens": rows[1]["tokens"] / args.n, "flops": None, "wall_time": None})
    rows.append({**rows[-1], "strategy": f"pass@{args.n} (oracle)", "accuracy": oracle, "correct": None})

    print(f"SmolLM2-135M-Instruct; {count} questions (seed {args.seed}); N={args.n}, T={args.temperature}")
    shown = [{**r, "GFLOPs": r["flops"] / 1e9 if r.get("flops") else None,
              "s/question": r.get("wall_time")} for r in rows]
    table(shown, ["strategy", "accuracy", "correct", "tokens", "GFLOPs", "s/question"])
    print(f"greedy answers with no extractable number: {no_answer:.1%}")
    print("\nby question kind (correct / questions)")
    kinds = [{"kind": k, "questions": c["count"], "greedy": c["greedy"],
              f"self_consistency@{args.n}": c[f"self_consistency@{args.n}"]} for k, c in sorted(per_kind.items())]
    table(kinds, ["kind", "questions", "greedy", f"self_consistency@{args.n}"])

    about = {"task": f"SmolLM2-135M-Instruct, {count} arithmetic/word questions (seed {args.seed})",
             "n": args.n, "temperature": args.temperature}
    plotted = [r for r in rows if r.get("flops")]
    if args.results:
        with open(args.results, "w", encoding="utf-8") as out:
            json.dump(evaluate.results_file(plotted, **about), out, indent=2)
    if args.plot:
        from metagen_plugins.plot import plot

        plot(evaluate.results_file(plotted, **about), args.plot)
    finish("smollm2", {"questions": count, "rows": rows, "by_kind": kinds, **about})


if __name__ == "__main__":
    main()
