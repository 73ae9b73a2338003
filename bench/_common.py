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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fakes"))  # vllm_server


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
    from vllm_server import ServerFailed, VLLMServer

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
