"""Accuracy vs compute of the strategies on the demo task (the project's own models).

On held-out problems, each row runs one configuration through metagen_plugins.run() and reports
the accuracy of the selected answer and the mean tokens generated, forward passes, FLOPs and
seconds per problem; pass@k is the unbiased estimate from 16 samples (Chen et al., 2021).
Step beam search is sized like best-of-16 (4 beams x 4 expansions = 16 continuations per step),
so it spends the same tokens on average; a second row holds every problem to best-of-16's mean.
Self-consistency is also swept over temperature and N.

    python bench/strategies.py [--quick] [--problems N] [--plot docs/strategies.png]
"""

from __future__ import annotations

from _common import arguments, finish, table

import math
import sys
import time

import metagen_plugins
from metagen_plugins.demo.task import is_correct
from metagen_plugins.demo.train import held_out

RULE = {"name": "step_checker"}
LEARNED = {"name": "process_reward_model", "path": "demo-arith-prm", "aggregate": "min"}
STEP = {"step_tokens": 16, "max_steps": 5}


def sampled(temperature: float = 0.8, **extra) -> dict:
    return {"processors": [{"name": "temperature", "temperature": temperature}],
            "generation": {"max_new_tokens": 48, "seed": 0}, **extra}


def vote_shapes(problems, results) -> dict:
    """How the votes fall: is the right answer sampled, does it win, and how concentrated the
    wrong winners are (a systematic error is one wrong answer most samples agree on)."""
    from collections import Counter

    from metagen_hooks.answers import extract

    present = wins = 0
    wrong_share, right_share = [], []
    for p, r in zip(problems, results):
        answers = Counter(extract(c.text) for c in r.candidates)
        right = str(p.answer)
        present += answers[right] > 0
        top, count = answers.most_common(1)[0]
        if top == right:
            wins += 1
        else:
            wrong_share.append(count / len(r.candidates))
            right_share.append(answers[right] / len(r.candidates))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {"right_present": present / len(problems), "right_wins": wins / len(problems),
            "wrong_winner_share": mean(wrong_share), "right_share_when_wrong": mean(right_share)}


def pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


class Bench:
    def __init__(self, model, tok, problems):
        self.model, self.tok, self.problems = model, tok, problems
        self.rows: list[dict] = []

    def run(self, label: str, config: dict, record: bool = True):
        start = time.perf_counter()
        results = metagen_plugins.run(config, [p.prompt for p in self.problems], model=self.model,
                                      tokenizer=self.tok)
        seconds = time.perf_counter() - start
        n = len(self.problems)
        correct = sum(bool(r.best) and is_correct(p.prompt, r.best.text) for p, r in zip(self.problems, results))
        spent = {k: sum(r.budget.spent()[k] for r in results) / n
                 for k in ("tokens_generated", "forward_passes", "flops")}
        row = {"strategy": label, "accuracy": correct / n, "tokens": spent["tokens_generated"],
               "passes": spent["forward_passes"], "MFLOPs": spent["flops"] / 1e6, "s/problem": seconds / n}
        if record:
            self.rows.append(row)
        print(f"  {label}: {row['accuracy']:.1%} ({seconds:.0f} s)", file=sys.stderr, flush=True)
        return row, results


def main() -> None:
    def extra(parser):
        parser.add_argument("--problems", type=int, default=None, help="held-out problems (default 200, quick 20)")
        parser.add_argument("--plot", help="write accuracy vs FLOPs to this PNG/SVG (needs matplotlib)")

    args = arguments(__doc__, extra)
    count = args.problems or (20 if args.quick else 200)
    big = 4 if args.quick else 16
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metagen_plugins.models import resolve

    path = resolve("demo-arith")
    bench = Bench(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path),
                  held_out()[:count])
    greedy, _ = bench.run("greedy", {"generation": {"max_new_tokens": 48}})
    bench.run("sampling (T=0.8)", sampled())
    row, results = bench.run(f"parallel@{big}", sampled(strategy={"name": "parallel", "n": big}), record=False)
    for k in sorted({1, 4, big}):
        rates = [pass_at_k(big, sum(is_correct(p.prompt, c.text) for c in r.candidates), k)
                 for p, r in zip(bench.problems, results)]
        share = k / big  # pass@k costs k samples (estimated from the big ones, Chen et al.)
        bench.rows.append({**row, "strategy": f"pass@{k} (oracle)", "accuracy": sum(rates) / len(rates),
                           **{key: row[key] * share for key in ("tokens", "MFLOPs", "s/problem")}})
    for n in sorted({4, big}):
        _, voted = bench.run(f"self_consistency@{n}", sampled(strategy={"name": "self_consistency", "n": n}))
    votes = vote_shapes(bench.problems, voted)
    bon_tokens = 0.0
    for n in sorted({4, big}):
        row, _ = bench.run(f"best_of_{n} + rule verifier", sampled(strategy={"name": "best_of_n", "n": n}, scorer=RULE))
        bon_tokens = row["tokens"]
        bench.run(f"best_of_{n} + learned PRM", sampled(strategy={"name": "best_of_n", "n": n}, scorer=LEARNED))
    bench.run(f"weighted_majority@{big} + learned PRM",
              sampled(strategy={"name": "weighted_majority", "n": big}, scorer=LEARNED))
    width = math.isqrt(big)  # beam_width x expansions = N, as in best-of-N
    beam = {"name": "step_beam_search", "beam_width": width, "expansions": width, **STEP}
    for label, scorer in (("learned PRM", LEARNED), ("rule verifier", RULE)):
        bench.run(f"step_beam_search {width}x{width} + {label}", sampled(strategy=beam, scorer=scorer))
    # The same search held to best-of-N's *mean* spend on every problem: starves the long ones.
    bench.run(f"step_beam_search {width}x{width} + rule verifier, each problem <= best_of_{big}'s mean tokens",
              sampled(strategy=beam, scorer=RULE, budget={"max_tokens": math.ceil(bon_tokens)}))
    bench.run(f"rebase n={big} + learned PRM", sampled(strategy={"name": "rebase", "n": big, **STEP}, scorer=LEARNED))
    bench.run("mcts 16 iterations + learned PRM",
              sampled(strategy={"name": "mcts", "iterations": 16, "expansions": 3, **STEP}, scorer=LEARNED))
    bench.run("particle_filtering n=8 + learned PRM",
              sampled(strategy={"name": "particle_filtering", "n": 8, **STEP}, scorer=LEARNED))
    bench.run("self_repair 3 rounds + rule verifier", sampled(strategy={"name": "self_repair", "rounds": 3}, scorer=RULE))
    # The demo model reads no instructions, so its "revision prompt" is the question again: what
    # self-refine does for a model that cannot use feedback (resample until the checker accepts).
    bench.run("self_refine 3 rounds + rule verifier (no usable feedback)",
              sampled(strategy={"name": "self_refine", "rounds": 3, "template": "{prompt}"}, scorer=RULE))

    print(f"demo-arith; {count} held-out problems; temperature 0.8, seed 0")
    columns = ["strategy", "accuracy", "tokens", "passes", "MFLOPs", "s/problem"]
    table(bench.rows, columns)

    sweep = []
    for t in (0.2, 0.4, 0.6, 0.8, 1.0):
        for n in sorted({4, 8, big}):
            row, _ = bench.run(f"self_consistency@{n} T={t}", sampled(t, strategy={"name": "self_consistency", "n": n}),
                               record=False)
            sweep.append({"temperature": t, "n": n, "accuracy": row["accuracy"], "tokens": row["tokens"]})
    best = max(sweep, key=lambda r: r["accuracy"])
    print(f"\nwhy voting stalls (self_consistency@{big}, T=0.8): the right answer is among the samples on "
          f"{votes['right_present']:.0%} of problems and wins the vote on {votes['right_wins']:.0%}; where the "
          f"vote is wrong, the winning wrong answer holds {votes['wrong_winner_share']:.0%} of the votes and the "
          f"right one {votes['right_share_when_wrong']:.0%}")
    print("\nself-consistency over temperature and N")
    table(sweep, ["temperature", "n", "accuracy", "tokens"])
    print(f"best setting: T={best['temperature']}, N={best['n']}: {best['accuracy']:.1%} "
          f"(greedy {greedy['accuracy']:.1%})")
    if args.plot:
        from metagen_plugins.plot import plot

        plot({"task": "demo-arith", "rows": [{**r, "flops": r["MFLOPs"] * 1e6} for r in bench.rows]}, args.plot,
             title="demo-arith: accuracy vs compute (one line per strategy over N)")
    finish("strategies", {"problems": count, "rows": bench.rows, "self_consistency_sweep": sweep,
                          "votes": votes})


if __name__ == "__main__":
    main()
