"""Token accounting for the in-process host, in one place: what a request computed and reused
given what the prefix cache held, and what a prompt is charged (as if it ran alone)."""

from __future__ import annotations

import bisect
from typing import Sequence


def fresh(tokens: int, hit: int, rows: int) -> tuple[int, int, int]:
    """Prompt tokens computed and reused, and prefill passes, of ``rows`` rows continuing
    ``tokens`` tokens whose first ``hit`` (of the ``tokens - 1`` that form the prefix) were
    cached: the prefix is computed past the hit once, and its last token runs once per row."""
    prefix = tokens - 1
    return (prefix - hit) + rows, hit + prefix * (rows - 1), int(prefix > hit)


class Ledger:
    """What one generator has computed KV for (its prompts, its own candidates), so a request is
    charged as its prompt alone would spend it with the prefix cache keeping all it computed:
    reuse counts only what this generator computed before, whether or not the cache, shared by
    every prompt, held more (another prompt's work) or less (evicted by another prompt's). So a
    prompt's budget, and every limit it enforces, does not depend on what ran beside it. The
    saving across prompts is real but not charged; an eviction's recomputation is real but not
    charged either (``[host] prefix_cache_bytes`` large enough for a prompt's own search avoids
    it; with 0, no cache, everything is computed and charged)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []  # token sequences with KV computed, sorted

    def charge(self, tokens: list[int], rows: int, results) -> tuple[int, int, int]:
        """Prompt tokens computed and reused, and forward passes, of one request's ``results``."""
        # in sorted order, the longest common prefix with ``tokens`` is a neighbour's
        at = bisect.bisect_left(self.seen, tuple(tokens))
        hit = min(len(tokens) - 1,
                  max((_common(tokens, seen) for seen in self.seen[max(0, at - 1):at + 1]), default=0))
        for new, _ in results:
            bisect.insort(self.seen, tuple(tokens) + tuple(new[:-1]))  # what has KV: all but the last token
        computed, reused, prefill = fresh(len(tokens), hit, rows)
        return computed, reused, prefill + max((len(new) for new, _ in results), default=0)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
