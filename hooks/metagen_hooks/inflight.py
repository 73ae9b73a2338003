"""Samples in flight: a strategy watches its samples as they decode and stops the ones not worth
finishing (adaptive compute: early-stopping self-consistency, DeepConf, early rejection).

A strategy passes a :class:`Watch` to ``Generator.sample`` / ``extend`` (``watch=``). A host
whose generator has ``watches = True`` calls ``watch.callback(samples)`` in the strategy's own
thread whenever some sample advanced or finished: ``samples`` is one :class:`InFlight` per
requested sample, in result order (prompt ``i``, sample ``j`` at ``i * n + j``). The callback
reads what each has decoded so far and may call :meth:`InFlight.cancel` on any of them; the host
stops that sample within a step or two (the in-process engine drops its row and gives the slot to
waiting work; a serving engine's request is aborted), returns it with ``finish_reason
"cancelled"`` and the tokens it had, and charges the budget only what was computed.

Use :func:`sample` rather than calling the generator directly: it passes the watch to a host
that takes it and, for one that does not (an outside host written before this existed), runs the
samples to the end and calls the callback once with all of them finished, so the strategy's
logic is the same everywhere (it only saves nothing there).

    def stop_when_two_agree(samples):
        done = [s for s in samples if s.finished and s.finish_reason != "cancelled"]
        if len({answers.extract(s.text) for s in done}) < len(done):
            for s in samples:
                s.cancel("two samples agree")

    [candidates] = inflight.sample(generator, [prompt], 8, Watch(stop_when_two_agree))

Confidence signals (DeepConf) need ``top_logprobs``: ask with ``Watch(..., top_logprobs=k)``;
each token then comes with the log-probabilities of the model's ``k`` likeliest tokens at that
step (``[]`` where the host cannot give them: check :attr:`InFlight.top_logprobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .types import Candidate

CANCELLED = "cancelled"
"""The ``finish_reason`` of a sample its strategy cancelled."""


@dataclass
class Watch:
    """What a strategy asks of a watched call: ``callback(samples)`` on progress, and the top
    ``top_logprobs`` log-probabilities of each step (0: none)."""

    callback: Callable[[Sequence["InFlight"]], None]
    top_logprobs: int = 0


@dataclass
class InFlight:
    """One sample while it decodes, as a watch callback sees it. The lists grow as the host
    decodes; ``finish_reason`` is ``None`` until the sample ends (``"stop"``, ``"length"`` or
    :data:`CANCELLED`)."""

    index: int
    prompt: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: str | None = None  # why the strategy cancelled it
    _decode: Callable[[list[int]], str] | None = field(default=None, repr=False)
    _text: str | None = field(default=None, repr=False)
    _text_len: int = field(default=-1, repr=False)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """The text decoded so far (decoded on demand, once per new token)."""
        if self._text is None or self._text_len != len(self.token_ids):
            if self._decode is None:
                return self._text or ""
            self._text, self._text_len = self._decode(self.token_ids), len(self.token_ids)
        return self._text

    def set_text(self, text: str) -> None:
        """For hosts that receive text (a serving engine's stream): the text so far."""
        self._text, self._text_len, self._decode = text, len(self.token_ids), None

    def cancel(self, reason: str = "cancelled by its strategy") -> None:
        """Stop this sample; a finished one is left as it is."""
        if self.finish_reason is None and self.cancelled is None:
            self.cancelled = reason

    def confidence(self, window: int | None = None) -> float:
        """DeepConf's token confidence averaged over the last ``window`` tokens (all when
        ``None``): the negative mean of each step's top-k log-probabilities (high: the model was
        sure). ``nan`` without top log-probabilities."""
        steps = self.top_logprobs if window is None else self.top_logprobs[-window:]
        steps = [s for s in steps if s]
        if not steps:
            return math.nan
        return sum(-sum(s) / len(s) for s in steps) / len(steps)


def sample(generator, prompts: Sequence[str], n: int, watch: Watch, *, max_new_tokens: int | None = None,
           stop: Sequence[str] | None = None) -> list[list[Candidate]]:
    """``generator.sample`` watched by ``watch`` on a host that streams; on one that does not,
    the samples are drawn whole and ``watch.callback`` sees them once, all finished."""
    if getattr(generator, "watches", False):
        return generator.sample(prompts, n, max_new_tokens=max_new_tokens, stop=stop, watch=watch)
    return _after(generator.sample(prompts, n, max_new_tokens=max_new_tokens, stop=stop), watch)


def extend(generator, prefixes: Sequence[Candidate], n: int, watch: Watch, *, max_new_tokens: int | None = None,
           stop: Sequence[str] | None = None) -> list[list[Candidate]]:
    """``generator.extend`` watched by ``watch`` (as :func:`sample`)."""
    if getattr(generator, "watches", False):
        return generator.extend(prefixes, n, max_new_tokens=max_new_tokens, stop=stop, watch=watch)
    return _after(generator.extend(prefixes, n, max_new_tokens=max_new_tokens, stop=stop), watch)


def _after(groups: list[list[Candidate]], watch: Watch) -> list[list[Candidate]]:
    samples = []
    for group in groups:
        for c in group:
            s = InFlight(index=len(samples), prompt=c.prompt, token_ids=list(c.token_ids),
                         logprobs=list(c.logprobs), finish_reason=c.finish_reason)
            s.set_text(c.text)
            samples.append(s)
    if samples:
        watch.callback(samples)
    return groups


def live(samples: Sequence[InFlight]) -> list[InFlight]:
    """The samples still decoding (not finished, not cancelled)."""
    return [s for s in samples if s.finish_reason is None and s.cancelled is None]


def completed(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates that ran to their end (not cancelled)."""
    return [c for c in candidates if c.finish_reason != CANCELLED]
