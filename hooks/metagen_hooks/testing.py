"""A Generator for testing strategies without a model, torch or a server.

:class:`ScriptedGenerator` answers from a script: each sample's text is given in advance and
comes out one word at a time, all samples of a call advancing together, so a strategy that
watches its samples (:mod:`metagen_hooks.inflight`) sees them decode and its cancellations take
effect where they would on a real host. It keeps the budget protocol as hosts do (``allow``
before, ``charge`` after, what was generated).

    from metagen_hooks.testing import ScriptedGenerator

    gen = ScriptedGenerator(["The answer is 4.", "The answer is 5.", "The answer is 4."])
    result = MyStrategy(n=3).run("2+2?", gen, None, gen.budget)
    assert result.best.text == "The answer is 4."
"""

from __future__ import annotations

import math
import re
from typing import Callable, Mapping, Sequence

from .inflight import CANCELLED, InFlight, Watch
from .types import Budget, Candidate

Script = Sequence[str] | Mapping[str, Sequence[str]] | Callable[[str, str, int], str]
_WORD = re.compile(r"\s*\S+|\s+$")


class ScriptedGenerator:
    """Texts from ``script``: a list (the ``i``-th sample of any prompt is ``script[i % len]``,
    counting across calls), a mapping prompt -> list, or ``script(prompt, prefix_text, i)``.

    Each word (with the space before it) is one token; its log-probability is ``logprob(word)``
    (default -0.5); its top-``k`` log-probabilities are its own and the rest of the probability
    spread evenly over ``k - 1`` others (so a likelier word means a more confident step); whitespace
    ending a text is a last token of its own. A stop string ends a sample right after it, as on a
    serving engine: the word that completes it is cut there (so a step search's steps end with
    their delimiter, ``". "`` included). ``max_new_tokens`` cuts a sample at that many words. ``calls`` records every
    request (``"sample"``/``"extend"``, prompts, n)."""

    watches = True

    def __init__(self, script: Script, budget: Budget | None = None, *,
                 logprob: Callable[[str], float] = lambda word: -0.5) -> None:
        self.script, self.budget, self.logprob = script, budget or Budget(), logprob
        self.calls: list[tuple[str, list[str], int]] = []
        self._drawn: dict[str, int] = {}

    def sample(self, prompts: Sequence[str], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None, watch: Watch | None = None) -> list[list[Candidate]]:
        self.calls.append(("sample", list(prompts), n))
        return self._run([(p, "") for p in prompts], n, max_new_tokens, stop, watch)

    def extend(self, prefixes: Sequence[Candidate], n: int = 1, *, max_new_tokens: int | None = None,
               stop: Sequence[str] | None = None, watch: Watch | None = None) -> list[list[Candidate]]:
        self.calls.append(("extend", [p.prompt for p in prefixes], n))
        return self._run([(p.prompt, p.text) for p in prefixes], n, max_new_tokens, stop, watch)

    def _text(self, prompt: str, prefix: str) -> str:
        i = self._drawn.get(prompt, 0)
        self._drawn[prompt] = i + 1
        if callable(self.script):
            return self.script(prompt, prefix, i)
        texts = self.script[prompt] if isinstance(self.script, Mapping) else self.script
        return texts[i % len(texts)]

    def _allow(self, jobs, n: int, limit: int) -> list[tuple[int, int]]:
        """Each job's samples and token limit as the budget allows them, asked job by job with the
        earlier jobs' worst case held (as hosts do), so one call's jobs never together exceed a
        limit; ``BudgetExceeded`` (nothing generated) when a job gets nothing."""
        plan: list[tuple[int, int]] = []
        try:
            for _ in jobs:
                plan.append(self.budget.allow(n, limit))
                self.budget.samples += plan[-1][0]
                self.budget.tokens_generated += plan[-1][0] * plan[-1][1]
        finally:
            for count, tokens in plan:
                self.budget.samples -= count
                self.budget.tokens_generated -= count * tokens
        return plan

    def _run(self, jobs, n, max_new_tokens, stop, watch) -> list[list[Candidate]]:
        plan = self._allow(jobs, n, max_new_tokens or 10**6)
        self.budget.samples += sum(count for count, _ in plan)
        k = watch.top_logprobs if watch else 0
        views, words, limits = [], [], []
        for (prompt, prefix), (count, limit) in zip(jobs, plan):
            for _ in range(count):
                text = self._text(prompt, prefix)
                views.append(InFlight(index=len(views), prompt=prompt))
                views[-1].set_text(prefix)
                words.append(_words(text, stop)[:limit])
                limits.append(limit)
        while any(v.finish_reason is None for v in views):
            for view, ws, limit in zip(views, words, limits):
                if view.finish_reason is not None:
                    continue
                if view.cancelled is not None:
                    view.finish_reason = CANCELLED
                    continue
                word = ws[len(view.token_ids)]
                view.token_ids.append(len(view.token_ids))
                view.logprobs.append(self.logprob(word))
                if k:
                    view.top_logprobs.append(_top(self.logprob(word), k))
                view.set_text(view.text + word)
                self.budget.tokens_generated += 1
                if len(view.token_ids) == len(ws):
                    view.finish_reason = "length" if len(ws) == limit and not _stopped(ws, stop) else "stop"
            if watch is not None:
                watch.callback(views)
        out = iter([Candidate(prompt=v.prompt, text=v.text, token_ids=list(v.token_ids), logprobs=list(v.logprobs),
                              finish_reason=v.finish_reason) for v in views])
        return [[next(out) for _ in range(count)] for count, _ in plan]


def _top(logprob: float, k: int) -> list[float]:
    rest = max(1e-12, 1.0 - math.exp(logprob)) / max(1, k - 1)
    return [logprob] + [math.log(rest)] * (k - 1)


def _words(text: str, stop: Sequence[str] | None) -> list[str]:
    """The text's words up to the first stop string, the word completing it cut right after it."""
    words, so_far = [], ""
    for word in _WORD.findall(text) or [""]:
        so_far += word
        ends = [so_far.find(s) + len(s) for s in stop or () if s and s in so_far]
        if ends:  # the earliest stop string ends inside this word: a serving engine cuts there
            words.append(word[: len(word) - (len(so_far) - min(ends))])
            break
        words.append(word)
    return words


def _stopped(words: list[str], stop: Sequence[str] | None) -> bool:
    return bool(stop) and any(s in "".join(words) for s in stop)
