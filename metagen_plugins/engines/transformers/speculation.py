"""Speculative decoding inside the batched engine: what drafts the next tokens of each row, how
many, and whether a step speculates at all.

A speculative step feeds each row its last token and ``k`` drafted ones; the target's logits at
the ``k + 1`` positions are processed and chosen exactly as ``k + 1`` plain steps would choose
them (the request's processors at every position, its seeded draws), and a row keeps its drafts
up to the first the target did not choose, then the target's own token there. The output is
therefore the target's own, token for token: greedy decoding is plain greedy decoding, and a
sampled row is drawn from the target's distribution with the same random numbers (a draft is
accepted when the target's draw is the drafted token: with a deterministic draft this is
speculative sampling's own acceptance rule, probability ``p(draft)``). What speculation changes is
only how many forward passes of the target that takes.

Random numbers: a sampled row's ``t``-th token uses a uniform number that is a function of the
row's seed and ``t`` alone (``uniforms``: a counter-based stream), so a row's draws do not depend
on how many positions a step verified, on its draft, or on which rows share the batch.

Drafters: ``Lookup`` (prompt lookup: the tokens that followed the latest earlier occurrence of
the row's last n-gram, in its prompt or its own output) and ``draft.DraftModel`` (a smaller model
of the same vocabulary, decoding every row in the same engine). ``Speculation`` holds the
drafter, each row's draft length (adapted to how many of its drafts the target kept) and the
choice, per number of rows in flight, between speculative and plain steps (speculative with one
row; elsewhere whichever a long-lived host has timed faster: where batching already fills the
CPU, verifying drafts costs more than it saves).
"""

from __future__ import annotations

import math
import time

import torch

# splitmix64's constants, as signed 64-bit integers (torch has no unsigned 64-bit arithmetic)
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (``>>`` is arithmetic on signed integers)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps, as in C)."""
    x = (x ^ _shift(x, 30)) * _MIX1
    x = (x ^ _shift(x, 27)) * _MIX2
    return x ^ _shift(x, 31)


def uniforms(seeds: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """A uniform number in [0, 1) (float64) per row, a function of the row's ``seeds`` and the
    token ``index`` alone: the counter-based stream a speculating engine samples from."""
    return _shift(mix(seeds + index * _GOLDEN), 11).double() * 2.0 ** -53


def row_seeds(generator: torch.Generator, n: int) -> torch.Tensor:
    """Seeds of a request's ``n`` rows, drawn from its own random stream."""
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    return mix(torch.arange(n, dtype=torch.long) + base)


class Lookup:
    """Prompt lookup (Saxena, 2023): a row's draft is what followed the latest earlier occurrence
    of its last ``ngram`` tokens (or fewer, down to one), in its prompt or its own output."""

    name = "prompt lookup"

    def __init__(self, ngram: int = 3) -> None:
        self.ngram = ngram

    def join(self, request) -> None:
        """The request's prefix indexed once; each row keeps its own history on top of it."""
        shared = _index(request.tokens, self.ngram)
        request.drafts = [_History(request.tokens, shared, self.ngram) for _ in range(request.n)]

    def propose(self, engine, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drafts [B, max k] for the batch's rows, at most ``k`` [B] each (``engine.pad_id``
        past a row's own), and how many each has."""
        width = int(k.max()) if k.numel() else 0
        out = torch.full((k.shape[0], width), engine.pad_id, dtype=torch.long)
        drafted = torch.zeros_like(k)
        lengths = k.tolist()
        for r in engine._active:
            if r.zombie:
                continue
            for i, row in enumerate(r.live):
                at = r.first + i
                if lengths[at]:
                    found = r.drafts[row].propose(lengths[at])
                    if found:
                        out[at, :len(found)] = torch.tensor(found)
                        drafted[at] = len(found)
        return out, drafted

    def rows_added(self, engine, rows: int) -> None:
        pass  # its state is on the requests

    def kept(self, index: torch.Tensor, first: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def fed(self, engine, inputs, positions, emitted: list[list[int]]) -> None:
        """Each row's new tokens join its history."""
        for r in engine._active:
            if r.zombie:
                continue
            for i, row in enumerate(r.live):
                if emitted[r.first + i]:
                    r.drafts[row].extend(emitted[r.first + i])


def _index(tokens: list[int], ngram: int) -> dict[tuple[int, ...], int]:
    """n-gram (1..ngram tokens) -> where the tokens after its latest occurrence start."""
    index: dict[tuple[int, ...], int] = {}
    for end in range(len(tokens) - 1):
        for n in range(1, min(ngram, end + 1) + 1):
            index[tuple(tokens[end - n + 1:end + 1])] = end + 1
    return index


class _History:
    """One row's tokens (prompt and output) and where its n-grams last occurred."""

    def __init__(self, tokens: list[int], shared: dict, ngram: int) -> None:
        self.tokens, self.shared, self.own, self.ngram = list(tokens), shared, {}, ngram

    def extend(self, new: list[int]) -> None:
        for token in new:
            end = len(self.tokens) - 1  # the n-grams ending here now have a continuation
            self.tokens.append(token)
            for n in range(1, min(self.ngram, end + 1) + 1):
                self.own[tuple(self.tokens[end - n + 1:end + 1])] = end + 1

    def propose(self, k: int) -> list[int]:
        for n in range(min(self.ngram, len(self.tokens)), 0, -1):
            key = tuple(self.tokens[-n:])
            start = self.own.get(key, self.shared.get(key))
            if start is not None:
                return self.tokens[start:start + k]
        return []


class Speculation:
    """The drafter, each row's draft length, and whether a step speculates.

    ``max_tokens``: the longest draft. A row starts at half of it (a draft model, which ends a
    draft by its own confidence: all of it); when the target keeps its whole draft its length
    grows by 2, else it shrinks by 1 (transformers' schedule for assisted generation), within
    1..max_tokens.

    ``rows``: speculate while at most this many rows are in flight. ``None`` ("auto"): per number
    of running rows (in powers of two), speculate where it has given more tokens per second.
    Until both kinds of step have been timed there, speculate with one row only: measured on a
    CPU, verifying drafts pays while one row's step is bound by reading the weights and costs
    more than it saves once a batch fills the cores (docs/transformers-host.md). After ``WARM``
    steps, every ``EVERY``-th step tries the kind not chosen, so a long-lived host learns its own."""

    # steps of each kind timed before the measurement decides; after WARM steps, one in EVERY tries
    # the kind not chosen (a short run never pays for trying: a draft model's first step for a
    # batch prefills every prompt in it)
    EXPLORE, WARM, EVERY = 3, 256, 32

    def __init__(self, drafter, max_tokens: int, rows: int | None = None) -> None:
        self.drafter, self.max_tokens, self.rows = drafter, max_tokens, rows
        self._rates: dict[tuple[int, bool], list[float]] = {}  # (bucket, speculative) -> [tokens, seconds, steps]
        self._started: float | None = None
        self._steps = 0

    def start(self, rows: int) -> bool:
        """Whether the next step over ``rows`` running rows speculates."""
        self._started = time.perf_counter()
        if self.rows is not None:
            return rows <= self.rows
        self._steps += 1
        bucket = _bucket(rows)
        spec = self._rates.setdefault((bucket, True), [0.0, 0.0, 0])
        plain = self._rates.setdefault((bucket, False), [0.0, 0.0, 0])
        if spec[2] >= self.EXPLORE and plain[2] >= self.EXPLORE:
            best = spec[0] / max(spec[1], 1e-9) >= plain[0] / max(plain[1], 1e-9)
        else:
            best = bucket == 0
        return (not best) if self._steps > self.WARM and self._steps % self.EVERY == 0 else best

    def record(self, rows: int, speculative: bool, tokens: int) -> None:
        """A step done: its kind, rows and tokens, timed from ``start``."""
        if self.rows is not None or self._started is None:
            return
        seconds = time.perf_counter() - self._started
        stats = self._rates.setdefault((_bucket(rows), speculative), [0.0, 0.0, 0])
        decay = 0.9 if stats[2] >= self.EXPLORE else 1.0  # recent steps count most once explored
        stats[0], stats[1], stats[2] = stats[0] * decay + tokens, stats[1] * decay + seconds, stats[2] + 1

    def draft(self, engine) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each of the engine's rows' drafts (at most its own length, and never past its
        max_new_tokens; padding after) and how many it drafted; none at all when no row has one."""
        room = (engine._limit - engine._age - 1).clamp(min=0)
        drafts, drafted = self.drafter.propose(engine, torch.where(engine._done, 0, torch.minimum(engine._k, room)))
        if not bool(drafted.any()):
            return None, None
        return drafts[:, :int(drafted.max())], drafted

    def stepped(self, engine, inputs, positions, chosen, emit, running, drafted, kept, speculative: bool) -> torch.Tensor:
        """After a step (speculative or not) that fed ``inputs`` at ``positions`` and in which each
        row emitted ``emit`` of ``chosen``: the drafter follows, the step is timed, and each row's
        next draft length (the engine's ``_k``) is returned."""
        counts = emit.tolist()
        self.drafter.fed(engine, inputs, positions, [row[:count] for row, count in zip(chosen.tolist(), counts)])
        self.record(int(running.sum()), speculative, sum(counts))
        if drafted is None:
            return engine._k
        return torch.where(running, self.adapt(engine._k, drafted, kept), engine._k)

    def first_length(self) -> int:
        """A new row's draft length: the longest for a drafter that ends drafts by its own
        confidence (a draft model), else half of it."""
        return self.max_tokens if getattr(self.drafter, "confident", False) else max(1, self.max_tokens // 2)

    def adapt(self, k: torch.Tensor, drafted: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """Each row's next draft length from this step's: rows that kept all ``drafted`` tokens
        grow by 2, rows that lost some shrink by 1; rows that drafted nothing keep theirs."""
        grown = torch.where(kept >= drafted, k + 2, k - 1).clamp(1, self.max_tokens)
        return torch.where(drafted > 0, grown, k)


def _bucket(rows: int) -> int:
    return max(0, math.ceil(math.log2(max(rows, 1))))


def speculation(settings, model, *, shared_prefix: bool, eos_ids: set[int], pad_id: int) -> Speculation | None:
    """The engine's speculation for ``[host]`` settings, when the batched engine runs (``batching``
    on, a model with the shared-prefix attention path): ``draft_model`` (loaded in the model's
    dtype) or prompt lookup (``prompt_lookup_num_tokens``); drafts of at most
    ``num_speculative_tokens`` (default: ``prompt_lookup_num_tokens``, else 20, as transformers' assisted
    generation). None otherwise
    (generate() speculates, one row at a time)."""
    if not (shared_prefix and settings.get("batching", True)):
        return None
    if "draft_model" in settings:
        from ...models import load_model_cached
        from .draft import DraftModel

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        draft = load_model_cached(settings["draft_model"], what="[host] draft_model", dtype=dtype)
        drafter = DraftModel(draft, model, settings.get("prefix_cache_bytes", 512 * 2**20) // 4,
                             eos_ids=eos_ids, pad_id=pad_id)
    elif "prompt_lookup_num_tokens" in settings:
        drafter = Lookup()
    else:
        return None
    longest = settings.get("num_speculative_tokens", settings.get("prompt_lookup_num_tokens", 20))
    rows = settings.get("speculative_rows", "auto")
    return Speculation(drafter, longest, None if rows == "auto" else rows)
