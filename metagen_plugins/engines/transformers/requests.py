"""What the engine decodes: a ``Request`` (n rows continuing one token prefix, with its own
components and random stream), the ``Progress`` a watching strategy reads, and how a row draws
its next token from its own stream."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from .attention import Prefix


@dataclass
class Request:
    """``n`` continuations of ``tokens`` (prompt + continuation so far), decoded in the batch.

    ``processors`` and ``criteria`` are this request's own component objects; ``generator``
    its seeded random stream when sampling (``None`` for greedy)."""

    tokens: list[int]
    n: int
    max_new_tokens: int
    processors: list = field(default_factory=list)
    criteria: list = field(default_factory=list)
    generator: torch.Generator | None = None
    # called in the decode thread with each token of a one-row request as it is chosen (not
    # the end-of-sequence token); it must be quick, and raising fails this request alone
    on_token: Callable[[int], None] | None = None
    # why its run was cancelled (None: it was not), asked once a step: a cancelled request's
    # rows leave the batch at the next step and it fails with BudgetExceeded
    cancelled: Callable[[], str | None] | None = None
    # a watching strategy's view of its rows (metagen_hooks.inflight): filled each step, and the
    # rows it cancels leave the batch
    progress: "Progress | None" = None
    future: Future = field(default_factory=Future)
    # filled by the engine
    ids: torch.Tensor | None = None  # [n, len(tokens) + steps] what processors see
    scores: list = field(default_factory=list)  # the last step's processed scores, per position (criteria see them)
    first: int = 0  # its first row in the batch
    zombie: bool = False  # ended (its rows wait in the batch for the next compaction)
    steps: int = 0
    cols: int = 0  # the batch's columns since it joined (one a step; 1 + its draft's length a speculative step)
    seeds: torch.Tensor | None = None  # its rows' seeds, when a speculating engine samples (speculation.uniforms)
    drafts: list | None = None  # each row's drafter state (speculation.py)
    draft_prefix: "Prefix | None" = None  # its prefix in a draft model's KV (draft.py), once drafted for
    prefix: "Prefix | None" = None
    computed: int = 0
    reused: int = 0
    passes: int = 0
    live: list[int] = field(default_factory=list)  # the row (0..n-1) of each of its rows in the batch
    left: dict = field(default_factory=dict)  # row -> (tokens, logprobs, own KV) of rows that left early
    cut: set = field(default_factory=set)  # rows its strategy cancelled

    def __post_init__(self) -> None:
        self.live = list(range(self.n))

    @property
    def width(self) -> int:
        """Its rows still in the batch (finished and cancelled rows leave at a compaction)."""
        return len(self.live)

    @property
    def slow(self) -> bool:
        """Whether it needs per-request work each step (components or sampling)."""
        return bool(self.processors or self.criteria or self.generator is not None)

    def cost(self) -> int:
        """Tokens of KV it may hold at its largest: its prefix once, each row's own positions."""
        return len(self.tokens) + self.width * (self.max_new_tokens + 1)


class Progress:
    """A watched request's rows as they decode, shared by the decode thread (which appends each
    step's tokens, log-probs and top log-probs, then notifies ``wake``) and the watching thread
    (which reads them and puts the rows it cancels in ``cancel``, row -> reason)."""

    def __init__(self, n: int, top_k: int, wake: threading.Condition) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[float]] = [[] for _ in range(n)]
        self.top: list[list[list[float]]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.cancel: dict[int, str] = {}
        self.top_k, self.wake = top_k, wake


def request_generator(seed_material: tuple) -> torch.Generator:
    """A request's random stream, derived from ``seed_material`` (e.g. the configured seed,
    the prompt, the call and prefix index): the same whatever shares the batch."""
    import hashlib

    digest = hashlib.blake2b(repr(seed_material).encode("utf-8"), digest_size=8).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``probs`` [rows, vocab], by inverse transform sampling: one uniform
    number per row from ``generator``, and the first token whose cumulative probability
    (in float64) exceeds it; a token of probability 0 is never drawn. One call for all of a
    request's rows (``torch.multinomial`` with a generator draws one row per call, and spends
    a random number per vocabulary entry)."""
    return inverse_cdf(probs, torch.rand(probs.shape[0], generator=generator, dtype=torch.float64))


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs``: the first whose cumulative probability (float64, over
    the row's total) exceeds the row's uniform number ``u`` [rows]."""
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)
