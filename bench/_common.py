"""Shared helpers for the benchmarks: arguments, timing, the table and the closing JSON line."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

# The repository root: this checkout's metagen, and its tests package (tests.fakes.vllm_server
# starts the benches' vLLM servers).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


CLOSED_FENCE = r"```[^\n]*\n[\s\S]*?\n```"
"""Where a PAL sample stops: once it has closed a fenced code block. (A stop string "\\n```" would
also match the opening fence and cut every "Here is the program:\\n```python" before its code.)"""

NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)"
"""A number anywhere in what a program printed (the last one is its answer)."""


def arguments(description: str, extra=None) -> argparse.Namespace:
    """--quick and --threads, plus whatever ``extra(parser)`` adds; sets torch's threads."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--quick", action="store_true", help="a smaller run that finishes in under 60 s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier ratios)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    return args


def start_vllm(host: dict, log: Path, extra_args=(), timeout: float = 600.0):
    """A vLLM server for ``[host]`` settings ``host`` (tests/fakes/vllm_server.py: serve-args, its
    own process group), announced on stderr; a server that does not come up ends the bench,
    naming its log. The caller stops it (``.stop()``)."""
    from tests.fakes.vllm_server import ServerFailed, VLLMServer

    server = VLLMServer(host, log, extra_args)
    print("starting: " + " ".join(server.args), file=sys.stderr, flush=True)
    try:
        server.wait(timeout)
    except ServerFailed as failed:
        raise SystemExit(f"{str(failed).splitlines()[0]}; log: {log}") from None
    print(f"server up after {time.monotonic() - server.started:.0f} s", file=sys.stderr, flush=True)
    return server


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (after one warm-up), and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def once(fn) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def group_cpu(pgid: int | None) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group ``pgid``
    (the server: API server, engine core, workers); 0 when not known. On a shared machine wall
    times swing with other load; the server's CPU per run says whether one side makes the
    server work harder."""
    if pgid is None:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def machine() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count()}


def finish(name: str, figures: dict) -> None:
    print(json.dumps({"bench": name, **figures, "machine": machine()}))


def mcnemar(a: list[bool], b: list[bool]) -> float:
    """Exact (binomial) McNemar p, two-sided: outcomes ``b`` against ``a`` on the same problems."""
    wins = sum(y and not x for x, y in zip(a, b))
    losses = sum(x and not y for x, y in zip(a, b))
    m = wins + losses
    if m == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(m, k) for k in range(min(wins, losses) + 1)) / 2 ** m)


def weighted_vote(texts: list[str], scores: list[float], extract) -> str | None:
    """The answer (``extract(text)``) with the largest total score; None when no text has one."""
    totals: Counter = Counter()
    for text, score in zip(texts, scores):
        answer = extract(text)
        if answer is not None:
            totals[answer] += score
    return totals.most_common(1)[0][0] if totals else None


# -- recorded samples: measured once, every selection rule replayed on the same texts -------------


class Replay:
    """A Generator that returns recorded samples: a selection strategy run on them is the same
    code as online, on exactly the samples the other rows saw."""

    def __init__(self, texts: list[str]) -> None:
        from metagen_hooks import Budget

        self.texts, self.budget = texts, Budget()

    def sample(self, prompts, n=1, *, max_new_tokens=None, stop=None):
        from metagen_hooks import Candidate

        return [[Candidate(p, t, finish_reason="stop") for t in self.texts[:n]] for p in prompts]

    def extend(self, prefixes, n=1, *, max_new_tokens=None, stop=None):
        raise NotImplementedError("recorded samples cannot be extended")


def record_runs(runs: list[tuple[str, dict]], prompts: list[str], **objects) -> list[dict]:
    """Per prompt, ``{label: {texts, tokens, flops, wall_time}}`` for each ``(label, config)`` in
    ``runs``, each run over all ``prompts`` at once (one batched decode loop; each prompt's budget
    stays its own, and each sequence's seeded random stream does not depend on its batch company).
    A run with any failure (e.g. a remote request that timed out) ends the bench, naming it:
    nothing incomplete is recorded."""
    import metagen_plugins

    out: list[dict] = [{} for _ in prompts]
    for label, config in runs:
        results = metagen_plugins.run(config, prompts, concurrency=len(prompts), **objects)
        failed = [(prompt[:60], result.failures[0]) for prompt, result in zip(prompts, results) if result.failures]
        if failed:  # a record of the texts that did arrive would pass for a complete run
            prompt, failure = failed[0]
            raise SystemExit(f"the {label} run failed on {len(failed)} of {len(prompts)} prompts, e.g. {prompt!r}: "
                             f"{failure.get('message', failure)}")
        for record, result in zip(out, results):
            spent = result.budget.spent()
            record[label] = {"texts": [c.text for c in result.candidates], "tokens": spent["tokens_generated"],
                             "flops": spent["flops"], "wall_time": spent["wall_time"]}
    return out


def read_records(paths: list[str]) -> list[dict]:
    """The records in the JSON-lines files ``paths``, by ``index`` (a missing file has none)."""
    rows = [json.loads(line) for p in paths if Path(p).exists()
            for line in Path(p).read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["index"])


def merge_records(records, agree: tuple[str, ...] = ()) -> list[dict]:
    """One record per problem, in index order: the runs of records made separately (e.g. --runs
    pal, then --runs greedy,samples) merged into one. Two records of a problem that both have a
    key of ``agree`` must hold the same value there, else the bench stops naming it."""
    by_index: dict[int, dict] = {}
    for record in records:
        known = by_index.setdefault(record["index"], dict(record))
        for key in agree:
            if key in known and key in record and known[key] != record[key]:
                raise SystemExit(f"records of problem {record['index']} disagree on {key} "
                                 f"({known[key]!r} vs {record[key]!r}); report them separately")
        known.update(record)
    return [by_index[i] for i in sorted(by_index)]


def append_records(path: str | None, records: list[dict]) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.writelines(json.dumps(record) + "\n" for record in records)


def cost_rows(records: list[dict], correct: dict[str, list], cost: dict[str, tuple[str, float]],
              descriptive: set[str] = frozenset(), baseline: str = "greedy") -> list[dict]:
    """One results row per rule in ``correct`` (per record: True/False, or a fraction for a rule
    that is a mean such as pass@1): accuracy, the exact McNemar p against ``baseline`` (not for
    the ``descriptive`` rows: oracles and means), and the mean generated tokens, FLOPs and wall
    time per record of the run the rule selects from (``cost[name] = (run label, share)``).

    FLOPs per generated token come from the baseline run vs the ``"samples"`` run on the same
    prompts: a rule using a share k/N of the N samples is charged the prompt's prefill once plus
    k/N of the generated tokens."""
    count = len(records)

    def mean(source, key):
        return sum(r[source][key] for r in records) / count

    per_token = ((mean("samples", "flops") - mean(baseline, "flops"))
                 / max(1e-9, mean("samples", "tokens") - mean(baseline, "tokens")))
    rows = []
    for name, outcome in correct.items():
        source, share = cost[name]
        tokens = mean(source, "tokens") * share
        prefill = mean(source, "flops") - per_token * mean(source, "tokens")
        flops = mean(source, "flops") if share == 1 else prefill + per_token * tokens
        exact = name not in descriptive
        rows.append({"strategy": name, "prompts": count, "accuracy": sum(outcome) / count,
                     "correct": sum(outcome) if exact else None,
                     "p_vs_greedy": mcnemar(correct[baseline], outcome) if exact and name != baseline else None,
                     "tokens": tokens, "flops": flops, "wall_time": mean(source, "wall_time") * share})
    return rows
