"""The engine-free half of the host kit: what a host declares when it registers, the budget
protocol it keeps, the ``[generation]`` settings it honours, and its seeded streams.

A host is a plugin like any other (``register_hosts``, docs/host-tutorial.md). Hosts that talk
to a server over HTTP also use the other half, ``metagen_plugins.hostkit`` (the remote-host
base, replicas, the completions protocol, retrying); a host needs nothing else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

DEFAULT_MAX_NEW_TOKENS = 64
"""``max_new_tokens`` when neither the call nor ``[generation] max_new_tokens`` says."""

GENERATION: dict[str, str] = {
    "max_new_tokens": f"the most tokens a sample may have when a call passes max_new_tokens=None "
                      f"(default {DEFAULT_MAX_NEW_TOKENS}); a call's own value wins",
    "do_sample": "whether to sample (else greedy): not read directly, but through the one sampling rule, "
                 "metagen_plugins.hostkit.sampling(config, registry), which also turns sampling on for a "
                 "configured sampling processor (top_p, ...) (default: off)",
    "seed": "the seed of a reproducible run (default: none, unseeded); each request draws its own "
            "stream from it (Seeds, derive_seed)",
    "token_healing": "regrow the prompt's last token (default false); a host that does not tokenize "
                     "prompts itself refuses true with a HostError",
}
"""The ``[generation]`` settings (``config.generation``, a dict holding only what the user set)
every host honours, with their defaults: what each means for a host."""


@dataclass(frozen=True)
class Capabilities:
    """What a host realises natively, declared once when it registers
    (``register(name, factory, settings=..., capabilities=Capabilities(...))``); metagen asks
    this declaration, never the host's name.

    ``in_process``
        the host calls component factories itself (a processor or stopping criterion runs
        there unless registered with ``<realiser>=False``), as the transformers host does.
    ``stop_strings``
        the host's Generator honours ``stop=``: a sample ends at the first of those strings,
        which its text keeps. Then the components that amount to stop strings (registered with
        ``stop_strings=``, as the built-in ``stop_strings`` and ``step_delimiter``) run on it
        with no realiser of their own: they are realised as ``{"stop": [...]}``, which the host
        adds to every call's ``stop``. Without it, and with no realiser, they cannot be
        configured on this host (no processors needed either way).
    ``streaming``
        ``host.generator(..., on_text=callback)`` streams plain decoding live (the host
        object's ``streams`` attribute, when it has one, says so per configuration).
    ``conversations``
        ``host.generator(..., conversation=[...])`` formats earlier chat turns (the object's
        ``conversations`` attribute, when it has one, says so per configuration).
    ``concurrency``
        prompts in flight at once when neither ``[run] concurrency`` nor the caller says (the
        object's ``default_concurrency``, when set, wins); None: metagen's default (64).
    """

    in_process: bool = False
    stop_strings: bool = False
    streaming: bool = False
    conversations: bool = False
    concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("in_process", "stop_strings", "streaming", "conversations"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Capabilities.{name} must be True or False, got {getattr(self, name)!r}")
        c = self.concurrency
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise TypeError(f"Capabilities.concurrency (prompts in flight by default) must be an int >= 1 "
                            f"or None, got {c!r}")


class HostBudget(Protocol):
    """The budget protocol, as a host keeps it with the ``budget`` its ``generator()`` is given
    (a :class:`metagen_hooks.Budget`):

    1. **allow before**: for each prompt of a call, ``n, max_new_tokens = budget.allow(n,
       max_new_tokens, prompt_tokens, params)`` before generating. It may shrink both; it
       raises :class:`metagen_hooks.BudgetExceeded` when not one token of one sample fits, or
       once the run is cancelled (let it propagate: the strategy ends on it).
    2. **generate at most what was allowed**: so a call may return **fewer than n** candidates
       for a prompt, and shorter ones; strategies expect that.
    3. **charge after**: ``budget.charge(samples=..., tokens_generated=...,
       prompt_tokens_computed=..., prompt_tokens_reused=..., forward_passes=..., params=...)``
       with what was delivered (a failed request's samples are not charged). ``params`` (the
       model's parameter count, 0 when unknown) turns tokens into FLOPs.

    While a call runs, ``budget.cancelled`` (a reason, or None) says the run was cancelled (a
    server's deadline passed): stop the call's work and raise ``BudgetExceeded``.
    """

    cancelled: str | None

    def allow(self, n: int, max_new_tokens: int, prompt_tokens: int = 0, params: int = 0) -> tuple[int, int]: ...

    def charge(self, *, prompt_tokens_computed: int = 0, prompt_tokens_reused: int = 0, tokens_generated: int = 0,
               forward_passes: int = 0, samples: int = 0, scorer_calls: int = 0, params: int = 0) -> None: ...


def derive_seed(*material: object) -> int:
    """A 63-bit seed derived from ``material`` (the configured seed, the prompt, the call, the
    sample's index...): the same material gives the same seed in every process, different
    material an unrelated one. For a random stream of its own per request or row, so a
    prompt's samples are reproducible whatever else shares the batch (the transformers host's
    streams come from this digest)."""
    digest = hashlib.blake2b(repr(material).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Seeds:
    """The seeds of one generator's requests: ``[generation] seed``, then seed + 1, seed + 2, ...
    one per request, so each request of a seeded run draws its own samples and the run repeats
    exactly; all None when the run is unseeded. An engine that draws ``k`` samples of one request
    seeded ``s`` gives them the seeds ``s ... s + k - 1`` (vLLM does): :meth:`split` says so."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.used = 0

    def next(self) -> int | None:
        """The next request's seed (None when unseeded)."""
        if self.seed is None:
            return None
        self.used += 1
        return self.seed + self.used - 1

    @staticmethod
    def split(seed: int | None, k: int) -> list[int | None]:
        """The seeds of ``k`` one-sample requests standing for one ``k``-sample request seeded ``seed``."""
        return [None if seed is None else seed + i for i in range(k)]


__all__ = ["Capabilities", "DEFAULT_MAX_NEW_TOKENS", "GENERATION", "HostBudget", "Seeds", "derive_seed"]
