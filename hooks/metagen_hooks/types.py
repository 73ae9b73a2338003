"""The plain data strategies, scorers and hosts exchange."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Candidate:
    """One generated continuation of a prompt.

    ``logprobs`` are the model's own log-probabilities of each generated token (before any
    processor), one per entry of ``token_ids``; ``finish_reason`` is ``"stop"`` (EOS, a stop
    string or a stopping criterion) or ``"length"`` (the token limit).
    """

    prompt: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BudgetExceeded(Exception):
    """Raised by a host when a request would spend more than the budget's limits allow."""


class ScorerNeeded(ValueError):
    """Raised by a strategy run without the scorer it needs, or with one of the wrong kind: the
    configuration's fault, not the strategy's (``metagen serve`` answers 400, not 500)."""


@dataclass
class Budget:
    """What a run may spend and what it has spent.

    Hosts charge generation; strategies charge scorer calls and consult :meth:`remaining`
    before asking for more. Limits of ``None`` are unbounded. FLOPs are estimated as
    ``2 x params x tokens`` over every token the model computes.
    """

    max_tokens: int | None = None
    max_flops: float | None = None
    max_samples: int | None = None

    prompt_tokens_computed: int = 0
    prompt_tokens_reused: int = 0
    tokens_generated: int = 0
    forward_passes: int = 0
    samples: int = 0
    scorer_calls: int = 0
    flops: float = 0.0
    wall_time: float = 0.0
    _started: float | None = field(default=None, repr=False, compare=False)
    cancelled: str | None = field(default=None, repr=False, compare=False)  # why, once cancel() was called

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_flops", "max_samples"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Budget.{name} must be >= 0 or None, got {value!r}")

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            self.wall_time += time.perf_counter() - self._started
            self._started = None

    def charge(
        self,
        *,
        prompt_tokens_computed: int = 0,
        prompt_tokens_reused: int = 0,
        tokens_generated: int = 0,
        forward_passes: int = 0,
        samples: int = 0,
        scorer_calls: int = 0,
        params: int = 0,
    ) -> None:
        """Add spending; ``params`` (the model's parameter count) turns tokens into FLOPs."""
        self.prompt_tokens_computed += prompt_tokens_computed
        self.prompt_tokens_reused += prompt_tokens_reused
        self.tokens_generated += tokens_generated
        self.forward_passes += forward_passes
        self.samples += samples
        self.scorer_calls += scorer_calls
        self.flops += 2.0 * params * (prompt_tokens_computed + tokens_generated)

    def remaining(self) -> dict[str, float | None]:
        """What is left under each limit (``None`` where there is no limit)."""
        return {
            "tokens": None if self.max_tokens is None else self.max_tokens - self.tokens_generated,
            "flops": None if self.max_flops is None else self.max_flops - self.flops,
            "samples": None if self.max_samples is None else self.max_samples - self.samples,
        }

    def cancel(self, reason: str) -> None:
        """Stop the run: from now on :meth:`allow` raises :class:`BudgetExceeded` with ``reason``
        (a server's deadline passed, its client went away), so the strategy ends at its next
        request for generation."""
        self.cancelled = reason

    def allow(self, n: int, max_new_tokens: int, prompt_tokens: int = 0, params: int = 0) -> tuple[int, int]:
        """Shrink a request for ``n`` samples of up to ``max_new_tokens`` so it cannot exceed
        any limit; raises :class:`BudgetExceeded` when not even one token of one sample fits,
        or once the run was cancelled. Hosts call this before generating, so a run never spends
        past its limits."""
        if self.cancelled is not None:
            raise BudgetExceeded(f"the run was cancelled: {self.cancelled}")
        left = self.remaining()
        if left["samples"] is not None:
            n = min(n, int(left["samples"]))
        if left["tokens"] is not None and n > 0:
            n = min(n, int(left["tokens"]))
            max_new_tokens = min(max_new_tokens, int(left["tokens"]) // max(n, 1))
        if left["flops"] is not None and params > 0 and n > 0:
            per_token = 2.0 * params
            spare = left["flops"] / per_token - prompt_tokens - n
            max_new_tokens = min(max_new_tokens, int(spare // n) if spare > 0 else 0)
        if n < 1 or max_new_tokens < 1:
            spent = ", ".join(f"{k}={v:g}" for k, v in self.spent().items() if k != "wall_time")
            raise BudgetExceeded(f"the budget allows no further generation ({spent}; limits "
                                 f"max_tokens={self.max_tokens}, max_flops={self.max_flops}, "
                                 f"max_samples={self.max_samples})")
        return n, max_new_tokens

    def exhausted(self) -> bool:
        return self.cancelled is not None or any(v is not None and v <= 0 for v in self.remaining().values())

    def spent(self) -> dict[str, float]:
        return {
            "prompt_tokens_computed": self.prompt_tokens_computed,
            "prompt_tokens_reused": self.prompt_tokens_reused,
            "tokens_generated": self.tokens_generated,
            "forward_passes": self.forward_passes,
            "samples": self.samples,
            "scorer_calls": self.scorer_calls,
            "flops": self.flops,
            "wall_time": round(self.wall_time, 6),
        }


@dataclass
class Result:
    """What a strategy returns for one prompt.

    ``scores`` align with ``candidates``; ``trace`` is a list of JSON-serialisable events (every
    candidate, branch, step score and selection) from which selection can be re-run offline.
    ``failures`` lists what did not complete (a remote request that failed, a plugin that
    raised) while the rest of the run went on; each entry says what failed and why.
    """

    prompt: str
    best: Candidate | None
    candidates: list[Candidate] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    strategy: str = ""
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "strategy": self.strategy,
            "best": self.best.to_dict() if self.best else None,
            "candidates": [c.to_dict() for c in self.candidates],
            "scores": list(self.scores),
            "budget": self.budget.spent(),
            "trace": list(self.trace),
            "failures": list(self.failures),
        }
