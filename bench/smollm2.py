"""Meta-generation on SmolLM2-135M-Instruct (a real pretrained model, not trained here), on simple
arithmetic and word questions generated from a seed: which strategy pays off at <= 8 samples.

Per question it runs, through metagen_plugins.run() with `metagen run`'s model configuration
(chat template, stop at a blank line, answer = the first equation's result):

- greedy decoding;
- N samples at temperature T (the `parallel` strategy), recorded once; the selection rules are
  then applied to these same samples by the strategies' own classes (replaying the recorded
  samples as their Generator): self-consistency, best-of-N and weighted majority with the
  `calculator` verifier, `calculator_vote` (the calculator repairs each sample's arithmetic,
  then the answers vote), and calculator_vote on the first k samples; greedy with the
  calculator is calculator_vote over the greedy text;
- with --pal, `program_aided` (PAL): N programs (up to 80 tokens each, stopped at a closed code
  fence; --pal-template plain or examples) run in the sandbox, their printed answers vote; the
  same programs replayed with the answer = the last number printed (program_aided@N[number]);
  and one vote over the calculator-repaired answers of k samples and the numbers of k programs.

Every row reports accuracy, the exact McNemar p against greedy on the same questions (and against
calculator_vote@N, `metagen run`'s default, as p_vs_default), and the
generated tokens and FLOPs per question (the cost of the sampling run the row selects from; the
calculator and the sandbox cost no model FLOPs; a rule using k of the N samples is charged the
prompt's prefill plus k/N of the generated tokens). Records are appended per question, so a long run
can be reported at any point and resumed:

    python bench/smollm2.py [--quick] [--questions 200] [--n 8] [--temperature 0.7] [--pal]
                            [--records r.jsonl] [--results docs/smollm2.json] [--plot docs/smollm2.png]
    python bench/smollm2.py --questions 200 --shard 0/2 --records a.jsonl &   # split over processes
    python bench/smollm2.py --from-records a.jsonl b.jsonl --results ... --plot ...
    python bench/smollm2.py --runs greedy,pal --records p.jsonl   # skip the plain samples
"""

from __future__ import annotations

from _common import CLOSED_FENCE, NUMBER, Replay, arguments, finish, mcnemar, merge_records, table

import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins import evaluate
from metagen_hooks import answers
from metagen_plugins.demo.questions import questions

PAL_TEMPLATES = {
    "plain": ("Write a short Python program that computes the answer to the question below and prints "
              "only the answer.\n\nQuestion: {prompt}"),
    # PAL proper is few-shot (Gao et al., 2023); two worked examples, in wordings and names the
    # questions never use, show the form: the computation in code, the number alone printed.
    "examples": ("Write a short Python program that computes the answer to the question and prints only "
                 "the answer.\n\nQuestion: Sara has 9 pens. She buys 4 more. How many pens does Sara have "
                 "now?\n```python\npens = 9 + 4\nprint(pens)\n```\n\nQuestion: A box holds 15 eggs. 6 "
                 "break. How many eggs are not broken?\n```python\neggs = 15 - 6\nprint(eggs)\n```\n\n"
                 "Question: {prompt}"),
}
"""The PAL run's code prompts (--pal-template); ``{prompt}`` is the question."""


def main() -> None:
    def extra(parser):
        parser.add_argument("--questions", type=int, default=None, help="how many (default 200, quick 6)")
        parser.add_argument("--seed", type=int, default=1000, help="question seed")
        parser.add_argument("--n", type=int, default=8, help="samples per question")
        parser.add_argument("--temperature", type=float, default=0.7)
        parser.add_argument("--pal", action="store_true", help="also run program_aided (N programs per question)")
        parser.add_argument("--pal-template", default="plain", choices=sorted(PAL_TEMPLATES),
                            help="the PAL code prompt: plain (an instruction) or examples (two worked examples)")
        parser.add_argument("--runs", default=None,
                            help="comma-separated model runs to make, of greedy, samples, pal (default: greedy,samples "
                                 "and pal with --pal); the report leaves out, and names, the rows of runs not made")
        parser.add_argument("--shard", default="0/1", help="I/K: run every K-th question from the I-th")
        parser.add_argument("--batch", type=int, default=16,
                            help="questions run at once (batched); per-question budgets stay exact")
        parser.add_argument("--records", help="append per-question records here (JSON lines); resumes")
        parser.add_argument("--from-records", nargs="+", metavar="FILE", help="report saved records; run nothing")
        parser.add_argument("--results", help="write the results file (for `metagen plot`) here")
        parser.add_argument("--plot", help="draw accuracy vs FLOPs to this PNG/SVG")

    args = arguments(__doc__, extra)
    paths = args.from_records or ([args.records] if args.records else [])
    if not args.from_records:
        measure(args)
    records = merged(json.loads(line) for p in paths for line in open(p, encoding="utf-8") if line.strip()) \
        if paths else measure.records
    if args.from_records and args.questions:  # the first --questions questions of the records
        records = [r for r in records if r["index"] < args.questions]
    report(records, args)


def merged(lines) -> list[dict]:
    """Records by question, those of one question (from runs made separately, e.g. --runs greedy,pal
    then --runs greedy,samples) merged into one; the runs must agree on the question set-up, and
    a question's PAL runs on their template."""
    records, templates = list(lines), {}
    for record in records:
        if "pal" in record and templates.setdefault(record["index"], record.get("pal_template", "plain")) != \
                record.get("pal_template", "plain"):
            raise SystemExit(f"smollm2.py: question {record['index']} has PAL runs with different templates; "
                             "report them separately")
    return merge_records(records, agree=("answer", "seed", "n", "temperature"))


def measure(args) -> None:
    count = args.questions or (6 if args.quick else 200)
    shard, shards = (int(x) for x in args.shard.split("/"))
    done = set()
    if args.records and Path(args.records).exists():
        done = {json.loads(line)["index"] for line in open(args.records, encoding="utf-8") if line.strip()}
    items = [(i, q) for i, q in enumerate(questions(count, seed=args.seed)) if i % shards == shard and i not in done]

    base = evaluate.default_config()
    base.pop("strategy", None)
    base["processors"] = [{"name": "temperature", "temperature": args.temperature}]
    pattern = DEFAULT_PATTERN
    greedy = evaluate.greedy(base)
    sampled = {**base, "strategy": {"name": "parallel", "n": args.n}}
    pal = {**base, "strategy": {"name": "program_aided", "n": args.n, "template": PAL_TEMPLATES[args.pal_template]},
           "stopping": [{"name": "regex", "pattern": CLOSED_FENCE}],
           "generation": {**base["generation"], "max_new_tokens": 80}}

    from metagen_plugins.models import load_model, load_tokenizer
    from metagen_plugins.models import resolve

    path = resolve(evaluate.DEFAULT_MODEL)
    model, tokenizer = load_model(path), load_tokenizer(path)
    measure.records = []
    start = time.perf_counter()
    configs = {"greedy": greedy, "samples": sampled, "pal": pal}
    runs = [(label, configs[label]) for label in selected_runs(args)]
    for first in range(0, len(items), args.batch):
        chunk = items[first:first + args.batch]
        records = [{"index": i, "kind": q.kind, "answer": q.answer, "seed": args.seed, "n": args.n,
                    "temperature": args.temperature, "pal_template": args.pal_template} for i, q in chunk]
        for label, cfg in runs:
            # The chunk's prompts run at once (one batched decode loop); each prompt's budget stays
            # its own, and each sequence's seeded random stream does not depend on its batch company.
            results = metagen_plugins.run(cfg, [q.prompt for _, q in chunk], model=model, tokenizer=tokenizer,
                                          concurrency=len(chunk))
            for record, result in zip(records, results):
                spent = result.budget.spent()
                record[label] = {"texts": [c.text for c in result.candidates], "tokens": spent["tokens_generated"],
                                 "flops": spent["flops"], "wall_time": spent["wall_time"]}
                if label == "pal":
                    record[label]["answer"] = answers.extract(result.best.text, r"(.+)") if result.best else None
                    reports = [c.meta.get("program_aided", {}) for c in result.candidates]
                    record[label]["printed"] = [r.get("answer") for r in reports]
                    record[label]["status"] = [r.get("status") for r in reports]
                    record[label]["reason"] = [r.get("reason") for r in reports]
        measure.records.extend(records)
        if args.records:
            with open(args.records, "a", encoding="utf-8") as out:
                out.writelines(json.dumps(record) + "\n" for record in records)
        print(f"  [{args.shard}] {first + len(chunk)}/{len(items)} questions ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)


def selected_runs(args) -> list[str]:
    """The model runs --runs (or --pal) asks for, in a fixed order; greedy is always made (every row's
    McNemar p is against it)."""
    wanted = args.runs.split(",") if args.runs else ["greedy", "samples"] + (["pal"] if args.pal else [])
    unknown = sorted(set(wanted) - {"greedy", "samples", "pal"})
    if unknown:
        raise SystemExit(f"smollm2.py: --runs {args.runs!r}: unknown run(s) {', '.join(unknown)}; "
                         "choose among greedy, samples, pal")
    return ["greedy"] + [label for label in ("samples", "pal") if label in wanted]


DEFAULT_PATTERN = r"\A(?:[^=]*?=|.*?answer(?: is)?:?|\s*)\s*(-?\d+)"
"""The answer pattern of `metagen run`'s SmolLM2 configuration (the first equation's result)."""


def selections(n: int):
    """(row name, source, strategy name, parameters, scorer, samples used) for each rule."""
    calc = {"name": "calculator"}
    rules = [("greedy + calculator", "greedy", "calculator_vote", {"n": 1}, None, 1),
             (f"self_consistency@{n}", "samples", "self_consistency", {"n": n}, None, n),
             (f"best_of_{n}[calculator]", "samples", "best_of_n", {"n": n}, calc, n),
             (f"weighted_majority@{n}[calculator]", "samples", "weighted_majority", {"n": n}, calc, n)]
    for k in sorted({max(1, n // 4), max(1, n // 2), n}):
        rules.append((f"calculator_vote@{k}", "samples", "calculator_vote", {"n": k}, None, k))
    return rules


def combined_vote(record: dict, k: int) -> str | None:
    """The majority over the calculator-repaired answers of the first ``k`` samples and the
    printed numbers of the first ``k`` programs (ties: the answer given first, samples first)."""
    from metagen_plugins.builtin.scorers.calculator import repair

    given = [answer_of(repair(t)[0]) for t in record["samples"]["texts"][:k]] + record["pal"]["numbers"][:k]
    votes = Counter(a for a in given if a is not None)
    return max(votes, key=lambda a: (votes[a], -given.index(a))) if votes else None


def failure_modes(records: list[dict]) -> list[dict]:
    """How every PAL sample ended, one reason each, checked in this order: right answer (the last
    printed number), no code block at all, a syntax error (in a block cut at the token limit, or
    not), another exception, a sandbox limit, printed nothing, printed no number, printed a wrong
    number."""
    counts: Counter = Counter()
    for r in records:
        pal = r["pal"]
        for text, status, reason, printed, number in zip(pal["texts"], pal["status"], pal["reason"],
                                                         pal["printed"], pal["numbers"]):
            reason = reason or ""
            if number == r["answer"]:
                outcome = ("right answer, printed alone" if printed == r["answer"]
                           else "right answer, inside other text")
            elif "```" not in text:
                outcome = "no code block (prose or an equation)"
            elif status == "error" and ("SyntaxError" in reason or "IndentationError" in reason):
                # a block still open when the sample ended was cut at the token limit
                outcome = "syntax error: cut at the token limit" if text.count("```") % 2 else "syntax error"
            elif status == "error":
                kind = re.search(r"\b([A-Z]\w*(?:Error|Exception|Exit))\b", reason)
                outcome = f"exception: {kind.group(1) if kind else reason}"
            elif status != "ok":
                outcome = f"sandbox: {status}"
            elif printed is None:
                outcome = "printed nothing"
            elif number is None:
                outcome = "printed no number"
            else:
                outcome = "printed a wrong number"
            counts[outcome] += 1
    total = sum(counts.values())
    return [{"outcome": k, "samples": v, "share": f"{v / total:.1%}"} for k, v in counts.most_common()]


def answer_of(records_row_text: str | None) -> str | None:
    return answers.extract(records_row_text, DEFAULT_PATTERN) if records_row_text is not None else None


def report(records: list[dict], args) -> None:
    if not records:
        print("no records")
        return
    registry = metagen_plugins.get_registry()
    n, temperature = records[0]["n"], records[0]["temperature"]
    count = len(records)
    correct: dict[str, list[bool]] = {}
    cost: dict[str, tuple[str, float]] = {}
    correct["greedy"] = [answer_of(r["greedy"]["texts"][0]) == r["answer"] for r in records]
    cost["greedy"] = ("greedy", 1.0)
    made = {label for label in ("samples", "pal") if all(label in r for r in records)}
    for name, source, strategy, params, scorer, used in selections(n):
        if source not in made and source != "greedy":
            continue
        info = registry.get("strategies", strategy)
        built = metagen_plugins.build(info, {**params, **({"answer_pattern": DEFAULT_PATTERN}
                                                          if strategy != "best_of_n" else {})})
        scorer_obj = metagen_plugins.build(registry.get("scorers", scorer["name"]), {}) if scorer else None
        outcome = []
        for r in records:
            result = built.run("", Replay(r[source]["texts"]), scorer_obj, Budget())
            outcome.append(bool(result.best) and answer_of(result.best.text) == r["answer"])
        correct[name] = outcome
        cost[name] = (source, used / max(1, len(records[0][source]["texts"])))
    if "samples" in made:
        oracle = f"pass@{n} (oracle)"
        correct[oracle] = [r["answer"] in [answer_of(t) for t in r["samples"]["texts"]] for r in records]
        cost[oracle] = ("samples", 1.0)
    if "pal" in made:
        correct[f"program_aided@{n}"] = [r["pal"]["answer"] == r["answer"] for r in records]
        cost[f"program_aided@{n}"] = ("pal", 1.0)
        correct[f"pal pass@{n} (oracle)"] = [r["answer"] in r["pal"]["printed"] for r in records]
        cost[f"pal pass@{n} (oracle)"] = ("pal", 1.0)
        # The same programs again (re-run in the sandbox by the strategy's own class), each answer
        # now the last number the program printed: "The answer is 11 books" votes with "11".
        numeric = metagen_plugins.build(registry.get("strategies", "program_aided"),
                                        {"n": n, "answer_pattern": NUMBER})
        outcomes = [numeric.run("", Replay(r["pal"]["texts"]), None, Budget()) for r in records]
        for r, result in zip(records, outcomes):
            r["pal"]["numbers"] = [c.meta["program_aided"]["answer"] for c in result.candidates]
        correct[f"program_aided@{n}[number]"] = [bool(res.best) and res.best.text == r["answer"]
                                                 for r, res in zip(records, outcomes)]
        cost[f"program_aided@{n}[number]"] = ("pal", 1.0)
        correct[f"pal[number] pass@{n} (oracle)"] = [r["answer"] in r["pal"]["numbers"] for r in records]
        cost[f"pal[number] pass@{n} (oracle)"] = ("pal", 1.0)
    if "pal" in made and "samples" in made:
        # Both kinds of evidence in one vote at the same sample count: the calculator-repaired
        # answers of the first k plain samples and the printed numbers of the first k programs.
        for k in sorted({max(1, n // 2), n}):
            name = f"calculator_vote@{k} + program_aided@{k}[number]"
            correct[name] = [combined_vote(r, k) == r["answer"] for r in records]
            cost[name] = ("both", k / n)
    missing = [label for label in ("samples", "pal") if label not in made]

    def mean(source, key):
        if source == "both":
            return mean("samples", key) + mean("pal", key)
        return sum(r[source][key] for r in records) / count

    # FLOPs per generated token, from greedy vs the samples on the same prompts: a rule using k of
    # the N samples is charged the shared prompt prefill once plus k/N of the generated tokens.
    per_token = ((mean("samples", "flops") - mean("greedy", "flops"))
                 / max(1e-9, mean("samples", "tokens") - mean("greedy", "tokens"))) if "samples" in made else 0.0
    default = f"calculator_vote@{n}"  # `metagen run`'s default on SmolLM2
    rows = []
    for name, outcome in correct.items():
        source, share = cost[name]
        tokens = mean(source, "tokens") * share
        if source == "both":  # each run's own prefill once plus k/N of its generated tokens
            flops = sum(mean(s, "flops") - per_token * mean(s, "tokens") * (1 - share) for s in ("samples", "pal"))
        else:
            prefill = mean(source, "flops") - per_token * mean(source, "tokens")
            flops = mean(source, "flops") if share == 1 else prefill + per_token * tokens
        wall = mean(source, "wall_time") * share
        oracle_row = "oracle" in name
        rows.append({"strategy": name, "prompts": count, "accuracy": sum(outcome) / count,
                     "correct": None if oracle_row else sum(outcome),
                     "p_vs_greedy": None if name == "greedy" or oracle_row else mcnemar(correct["greedy"], outcome),
                     "p_vs_default": None if name in (default, "greedy") or oracle_row or default not in correct
                     else mcnemar(correct[default], outcome),
                     "tokens": tokens, "flops": flops, "wall_time": wall})
    print(f"SmolLM2-135M-Instruct, {count} arithmetic/word questions (seed {records[0]['seed']}); "
          f"N={n}, T={temperature}")
    if missing:
        print(f"not run on these questions (their rows are left out): {', '.join(missing)}")
    shown = [{**r, "GFLOPs": r["flops"] / 1e9} for r in rows]
    table(shown, ["strategy", "accuracy", "correct", "p_vs_greedy", "p_vs_default", "tokens", "GFLOPs"])

    kinds = []
    for kind in sorted({r["kind"] for r in records}):
        at = [i for i, r in enumerate(records) if r["kind"] == kind]
        kinds.append({"kind": kind, "questions": len(at),
                      **{name: sum(correct[name][i] for i in at) for name in correct if "oracle" not in name}})
    print("\nby question kind (correct / questions)")
    table(kinds, ["kind", "questions", *[k for k in correct if "oracle" not in k]])

    if "pal" in made:
        print(f"\nwhat the {n} PAL programs per question did (samples; first matching reason)")
        table(failure_modes(records), ["outcome", "samples", "share"])

    about = {"task": f"SmolLM2-135M-Instruct, {count} arithmetic/word questions (seed {records[0]['seed']})",
             "questions": count, "seed": records[0]["seed"], "n": n, "temperature": temperature}
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
