"""The protocols components satisfy. Structural: implement the methods, no base class needed."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from .types import Budget, Candidate, Result


@runtime_checkable
class Generator(Protocol):
    """The one interface strategies see; each host provides it. Strategies never import a host.

    Both methods return one list of candidates per input, each of length ``n``. The host shares
    work between them (one prefill for ``n`` samples; cached prefixes for ``extend``) and charges
    what it computed to ``budget``.
    """

    budget: Budget

    def sample(
        self,
        prompts: Sequence[str],
        n: int = 1,
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[list[Candidate]]:
        """Draw ``n`` continuations of each prompt."""
        ...

    def extend(
        self,
        prefixes: Sequence[Candidate],
        n: int = 1,
        *,
        max_new_tokens: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[list[Candidate]]:
        """Continue each partial candidate (prompt + text so far) ``n`` times; the returned
        candidates hold the whole continuation (old text + new). A prefix given as text with no
        ``token_ids`` is tokenized from its text. Texts include any stop string that ended them."""
        ...


@runtime_checkable
class Begins(Protocol):
    """Optional for a logits processor or stopping criterion that tracks what was generated:
    metagen's Generators call ``begin(prompt_length)`` before decoding, so the component knows
    which tokens of each row are the prompt and which an earlier continuation (a step-level
    search extending a partial solution). A plain ``model.generate()`` call does not call it."""

    def begin(self, prompt_length: int) -> None: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores whole candidates (verifier, outcome reward model, log-probability, ...).

    Higher is better. Returns one float per candidate.
    """

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]: ...


@runtime_checkable
class StepScorer(Protocol):
    """A process reward: one score per step of each candidate (steps split by the scorer)."""

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]: ...


@runtime_checkable
class PairwiseUtility(Protocol):
    """A utility between two outputs, for minimum Bayes risk selection. Higher is more alike."""

    def utility(self, hypothesis: str, reference: str) -> float: ...


@runtime_checkable
class Strategy(Protocol):
    """A meta-generation algorithm: runs one prompt and selects among what it generated.

    ``scorer`` is the configured scorer or ``None``; ``budget`` is the same object the
    generator charges, so a strategy reads :meth:`Budget.remaining` to stay within its limits.
    """

    def run(
        self, prompt: str, generator: Generator, scorer: Scorer | None, budget: Budget
    ) -> Result: ...


@runtime_checkable
class Pooled(Protocol):
    """Optional for a strategy whose answer is a choice among independent samples (voting,
    best-of-N): one budget can then span a dataset (``metagen run --total-tokens``,
    ``run(..., total_tokens=)``), every prompt drawing a first round and the rest going, a few
    samples at a time, to the prompts whose answer another sample is most likely to change.

    ``n`` is the strategy's own sample count (the allocator's first round takes a quarter of it,
    and no prompt gets more than ``n`` in all unless asked). ``draw(run, k)`` adds ``k`` samples
    as the strategy makes them (sampled, repaired, scored) and returns them with their scores
    (``[]`` when it scores none); ``decide(candidates, scores)`` returns the index it would choose,
    how unsettled that choice is (0: another sample cannot change it; 1: nothing is known), and
    what to record about it in the trace. ``run()`` is ``draw(run, n)`` then ``decide``."""

    n: int

    def draw(self, run, k: int) -> tuple[list[Candidate], list[float]]: ...

    def decide(self, candidates: Sequence[Candidate], scores: Sequence[float]) -> tuple[int | None, float, dict]: ...


@runtime_checkable
class Host(Protocol):
    """What a host's factory returns (see ``register_hosts``): one engine deployment or loaded
    model for a run, making a Generator per prompt.

    Optional, for chat services (``Runner.submit``, ``metagen serve``): a host whose
    ``conversations`` attribute is true takes ``generator(..., conversation=[{"role",
    "content"}, ...])``, earlier chat turns its prompts continue; one whose ``streams`` is true
    takes ``generator(..., on_text=callback)``, called with each new piece of the text of the
    generator's first one-sample request as it is decoded. A host without them is never given
    these arguments."""

    def generator(self, budget: Budget, config=None) -> Generator:
        """A Generator that charges ``budget``; ``config`` is a per-prompt configuration with the
        same ``[host]`` (None: the host's own)."""
        ...

    def context(self) -> dict:
        """What components may ask the host for: ``model``, ``tokenizer`` (empty for a server)."""
        ...

    def close(self) -> None:
        """Release what the host opened (clients, event loops); called when the run ends."""
        ...
