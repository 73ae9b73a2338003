"""Do the demo's learned verifiers help? Selection and search with them on held-out demo
problems, against greedy, a random sample and the exact step checker. The two verifiers:

- `verifier`: the `step_likelihood` scorer over demo-arith-verifier (a causal LM, the main network
  trained to the end of its schedule), scoring each step by its probability (aggregate `min`);
- `prm`: the `process_reward_model` scorer over demo-arith-prm (a sequence classifier trained on
  the policy's own step prefixes), aggregates `min` and `last`.

On held-out problems (by default the last 120 of the 200, which no test uses) it runs, through
metagen_plugins.run():

- greedy decoding, and N samples at T = 0.8 (the `parallel` strategy), recorded once; the
  selection rules are applied to these same samples: a random sample (the samples' mean
  accuracy), best-of-N and weighted majority with each verifier, self-consistency, best-of-N
  with the exact step checker, and pass@N (an oracle: some sample is right);
- step-level beam search (4 beams x 4 expansions, the size of best-of-16) with each verifier and
  with the step checker.

It reports accuracy, the exact McNemar p against greedy, the tokens generated per problem, and
each verifier's within-problem AUC: for each problem with both right and wrong samples, the
probability that a right sample outscores a wrong one (ties count half), averaged over those
problems. That is the quantity selection needs; the pooled AUC over all samples also rewards a
verifier that only knows which problems are hard.

    python bench/demo_verifier.py [--quick] [--problems 120] [--n 16] [--verifier demo-arith-verifier]
                                  [--prm demo-arith-prm]
"""

from __future__ import annotations

from _common import arguments, finish, mcnemar, table, weighted_vote

import math
import random
import sys
from collections import Counter

import metagen_plugins
from metagen_hooks.answers import extract
from metagen_plugins.demo.task import check_steps, is_correct
from metagen_plugins.demo.train import held_out

STEP = {"step_tokens": 16, "max_steps": 5}


def sampled(**extra) -> dict:
    return {"processors": [{"name": "temperature", "temperature": 0.8}],
            "generation": {"max_new_tokens": 48, "seed": 0}, **extra}


def auc(right: list[float], wrong: list[float]) -> float:
    return sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / (len(right) * len(wrong))


def within_problem_auc(labels: list[list[bool]], scores: list[list[float]]) -> tuple[float, int]:
    """Mean AUC over the problems with both right and wrong samples, and how many there are."""
    values = []
    for ls, ss in zip(labels, scores):
        right = [s for l, s in zip(ls, ss) if l]
        wrong = [s for l, s in zip(ls, ss) if not l]
        if right and wrong:
            values.append(auc(right, wrong))
    return (sum(values) / len(values) if values else float("nan")), len(values)


def pooled_auc(labels: list[list[bool]], scores: list[list[float]]) -> float:
    right = [s for ls, ss in zip(labels, scores) for l, s in zip(ls, ss) if l]
    wrong = [s for ls, ss in zip(labels, scores) for l, s in zip(ls, ss) if not l]
    return auc(right, wrong) if right and wrong else float("nan")


def pick_best(scores: list[float]) -> int:
    """The first of the highest scores (best_of_n's rule)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def verifier_rows(problems, texts: list[list[str]], scorers: dict[str, dict]) -> tuple[dict, dict]:
    """Correctness per problem of each selection rule over the recorded samples, and the AUCs,
    for each learned verifier (label -> scorer configuration)."""
    registry = metagen_plugins.get_registry()
    labels = [[is_correct(p.prompt, t) for t in ts] for p, ts in zip(problems, texts)]
    correct, aucs = {}, {}
    for label, entry in scorers.items():
        scorer = metagen_plugins.build(registry.get("scorers", entry["name"]),
                                       {k: v for k, v in entry.items() if k != "name"})
        scores = [scorer.score(p.prompt, [_candidate(p.prompt, t) for t in ts]) for p, ts in zip(problems, texts)]
        n = len(texts[0])
        correct[f"best_of_{n}[{label}]"] = [ls[pick_best(ss)] for ls, ss in zip(labels, scores)]
        correct[f"weighted_majority@{n}[{label}]"] = [
            weighted_vote(ts, ss, extract) == str(p.answer) for p, ts, ss in zip(problems, texts, scores)]
        within, count = within_problem_auc(labels, scores)
        aucs[label] = {"within_problem_auc": within, "problems_with_both": count,
                       "pooled_auc": pooled_auc(labels, scores)}
    return correct, aucs


def _candidate(prompt: str, text: str):
    from metagen_hooks import Candidate

    return Candidate(prompt, text, finish_reason="stop")


def main() -> None:
    def extra(parser):
        parser.add_argument("--problems", type=int, default=None, help="held-out problems (default 120, quick 20)")
        parser.add_argument("--n", type=int, default=16, help="samples per problem")
        parser.add_argument("--prm", default="demo-arith-prm", help="the sequence-classifier PRM (name or directory)")
        parser.add_argument("--verifier", default="demo-arith-verifier",
                            help="the step_likelihood verifier (name or directory)")

    args = arguments(__doc__, extra)
    count = args.problems or (20 if args.quick else 120)
    problems = held_out()[-count:]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metagen_plugins.models import resolve

    path = resolve("demo-arith")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    prompts = [p.prompt for p in problems]

    def run(config):
        return metagen_plugins.run(config, prompts, model=model, tokenizer=tok)

    def tokens(results):
        return sum(r.budget.spent()["tokens_generated"] for r in results) / len(results)

    correct: dict[str, list[bool]] = {}
    cost: dict[str, float] = {}
    greedy = run({"generation": {"max_new_tokens": 48}})
    correct["greedy"] = [is_correct(p.prompt, r.best.text) for p, r in zip(problems, greedy)]
    cost["greedy"] = tokens(greedy)
    print("  greedy done", file=sys.stderr, flush=True)
    samples = run(sampled(strategy={"name": "parallel", "n": args.n}))
    texts = [[c.text for c in r.candidates] for r in samples]
    labels = [[is_correct(p.prompt, t) for t in ts] for p, ts in zip(problems, texts)]
    sample_tokens = tokens(samples)
    rng = random.Random(0)
    correct["random sample"] = [ls[rng.randrange(len(ls))] for ls in labels]
    cost["random sample"] = sample_tokens / args.n
    votes = [Counter(a for a in map(extract, ts) if a is not None).most_common(1) for ts in texts]
    correct[f"self_consistency@{args.n}"] = [bool(v) and v[0][0] == str(p.answer) for p, v in zip(problems, votes)]
    checker = [[float(is_correct(p.prompt, t) and all(check_steps(p.prompt, t))) for t in ts]
               for p, ts in zip(problems, texts)]
    correct[f"best_of_{args.n}[step_checker]"] = [ls[pick_best(ss)] for ls, ss in zip(labels, checker)]
    prm = {"name": "process_reward_model", "path": args.prm}
    verifier = {"name": "step_likelihood", "path": args.verifier, "aggregate": "min"}
    learned, aucs = verifier_rows(problems, texts, {"prm, min": {**prm, "aggregate": "min"},
                                                    "prm, last": {**prm, "aggregate": "last"},
                                                    "verifier": verifier})
    correct.update(learned)
    for name in correct:
        cost.setdefault(name, sample_tokens)
    print("  samples scored", file=sys.stderr, flush=True)
    width = math.isqrt(args.n)
    beam = {"name": "step_beam_search", "beam_width": width, "expansions": width, **STEP}
    # A beam's score is its last step's (a PRM's P(good so far)) or its weakest step's (the
    # verifier's P(step), which says nothing of the steps before).
    for label, scorer, aggregate in ((f"step_beam_search {width}x{width}[prm]", {**prm, "aggregate": "last"}, "last"),
                                     (f"step_beam_search {width}x{width}[verifier]", verifier, "min"),
                                     (f"step_beam_search {width}x{width}[step_checker]", {"name": "step_checker"},
                                      "last")):
        results = run(sampled(strategy={**beam, "aggregate": aggregate}, scorer=scorer))
        correct[label] = [bool(r.best) and is_correct(p.prompt, r.best.text) for p, r in zip(problems, results)]
        cost[label] = tokens(results)
        print(f"  {label} done", file=sys.stderr, flush=True)
    oracle = f"pass@{args.n} (oracle)"
    correct[oracle] = [any(ls) for ls in labels]
    cost[oracle] = sample_tokens

    rows = []
    for name, outcome in correct.items():
        rows.append({"strategy": name, "accuracy": sum(outcome) / count,
                     "correct": None if "oracle" in name else sum(outcome),
                     "p_vs_greedy": None if name == "greedy" or "oracle" in name
                     else mcnemar(correct["greedy"], outcome),
                     "tokens": cost[name]})
    print(f"demo-arith, {count} held-out problems; N={args.n}, T=0.8; verifier = step_likelihood over "
          f"{args.verifier}; prm = process_reward_model {args.prm}")
    table(rows, ["strategy", "accuracy", "correct", "p_vs_greedy", "tokens"])
    # A verifier that carries no information, with ties broken by text, picks uniformly among the
    # *distinct* texts; right answers repeat more than wrong ones, so that is below a random sample.
    sample_mean = sum(sum(ls) / len(ls) for ls in labels) / count
    distinct = sum(sum(is_correct(p.prompt, t) for t in set(ts)) / len(set(ts)) for p, ts in zip(problems, texts)) / count
    print(f"\nexpected accuracy of a random sample {sample_mean:.1%}; of a random one of the distinct texts "
          f"{distinct:.1%} (what argmax over an uninformative score picks: right texts repeat, wrong ones vary)")
    print("\nthe learned verifiers' AUC (right vs wrong final answers)")
    table([{"scorer": k, **v} for k, v in aucs.items()],
          ["scorer", "within_problem_auc", "problems_with_both", "pooled_auc"])
    finish("demo_verifier", {"problems": count, "n": args.n, "prm": args.prm, "verifier": args.verifier,
                             "rows": rows, "auc": aucs,
                             "random_sample": sample_mean, "random_distinct_text": distinct})


if __name__ == "__main__":
    main()
